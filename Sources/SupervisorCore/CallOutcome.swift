import StrictJSON
import SupervisorPlatform

/// Which limit a call hit.
public enum LimitKind: String, Sendable, Equatable {
    case cpu, fileSize, output
    /// The supervisor's own cap on the output it holds for one call
    /// (`CallRunner.bufferedOutputCap`), below a manifest's larger limits.
    case bufferedOutput

    /// What the limit is, for messages.
    public var summary: String {
        switch self {
        case .cpu: return "CPU time limit (limits.cpuSeconds)"
        case .fileSize: return "file size limit (limits.fileSizeMiB)"
        case .output: return "output limit (limits.outputKiB)"
        case .bufferedOutput:
            return
                "supervisor's buffered output cap (\(CallRunner.bufferedOutputCap >> 20) MiB per frame or command output, "
                + "\(CallRunner.defaultOutputBudget >> 20) MiB for all calls together by default, whatever the manifest "
                + "declares)"
        }
    }
}

/// What a successful call returned.
public struct CellResult: Sendable, Equatable {
    /// MCP content items (text/image), control characters removed from text.
    public var content: [JSONValue]
    public var structuredContent: JSONValue?
}

/// Why a call was not admitted: nothing ran. (Policy refusals happen before
/// the runner; the runner itself refuses only what it finds when it builds
/// the worker's input.)
public enum CallRefusal: Sendable, Equatable, CustomStringConvertible {
    /// A command tool's arguments cannot be turned into its argv (an option
    /// injection, a value no argv can carry).
    case arguments(String)

    /// The `reason` of the `call.refused` event.
    public var reason: String {
        switch self {
        case .arguments: return "invalid_arguments"
        }
    }

    public var description: String {
        switch self {
        case .arguments(let m): return "arguments: \(m)"
        }
    }
}

/// How one call ended. Exactly one per call. A value, not an error: every
/// call has one, the successful ones included.
///
/// Three kinds of failure that are not the tool's own answer stay apart:
/// a **refusal** (`refused`: the call was not admitted, nothing ran), a cell
/// that **cannot run** (`cannotRun`: admitted, but the cell is broken or the
/// host cannot give the protection it declares, so no worker served it), and
/// a **sandbox violation** (`sandboxViolation`: the worker tried something
/// forbidden and was killed). Limits, the deadline and the frame protocol
/// are rules the worker broke too, each named by its own case.
public enum CallOutcome: Sendable, Equatable {
    case success(CellResult)
    /// The tool ran and reported failure.
    case toolError(String)
    /// The call's deadline passed; the worker was killed.
    case timeout
    /// The client cancelled; the worker was killed.
    case cancelled
    /// The worker tried a syscall outside its allowlist and was killed.
    case sandboxViolation(syscall: String, architecture: String)
    /// The worker died from a signal it was not sent by us.
    case killedBySignal(Int32)
    case limitExceeded(LimitKind)
    /// The worker broke the frame protocol; the call ended there.
    case protocolViolation(String)
    /// No worker could serve the call (verification, host, setup or spawn).
    case cannotRun(CellCannotRun)
    /// The call was not admitted; no worker was started.
    case refused(CallRefusal)
    /// A server cell's server listed tools other than the pinned ones (the
    /// difference): the call was not handed over.
    case definitionDrift(String)

    public var isSandboxViolation: Bool {
        if case .sandboxViolation = self { return true }
        return false
    }

    /// A short, stable name (security log, metrics).
    public var kind: String {
        switch self {
        case .success: return "success"
        case .toolError: return "tool_error"
        case .timeout: return "timeout"
        case .cancelled: return "cancelled"
        case .sandboxViolation: return "sandbox_violation"
        case .killedBySignal: return "killed_by_signal"
        case .limitExceeded: return "limit_exceeded"
        case .protocolViolation: return "protocol_violation"
        case .cannotRun: return "cannot_run"
        case .refused: return "refused"
        case .definitionDrift: return "definition_drift"
        }
    }

    /// Plain one-line description with the details (for operators and logs).
    public var detail: String {
        switch self {
        case .success: return "success"
        case .toolError(let m): return "tool error: \(m)"
        // Names the manifest field that sets the deadline, so the fix is
        // plain to whoever reads the log.
        case .timeout: return "timed out: the cell's limits.timeoutMilliseconds passed"
        case .cancelled: return "cancelled"
        case .sandboxViolation(let s, let a):
            return "killed by SIGSYS: syscall \(s) (\(a)) is not allowed for this cell"
        case .killedBySignal(let s): return "killed by \(signalName(s))"
        case .limitExceeded(let l): return "limit exceeded: \(l.summary)"
        case .protocolViolation(let m): return "protocol violation: \(m)"
        case .cannotRun(let c): return "cannot run: \(c)"
        case .refused(let r): return "refused: \(r)"
        case .definitionDrift(let d): return "tool definitions drifted from the pinned ones: \(d)"
        }
    }

    /// Short cause for the model's context: no paths, no internals.
    public var shortCause: String {
        switch self {
        case .success: return "success"
        case .toolError(let m): return m
        case .timeout: return "The tool call timed out."
        case .cancelled: return "The tool call was cancelled."
        case .sandboxViolation(let s, _): return "The tool was stopped by the sandbox (forbidden system call \(s))."
        case .killedBySignal(let s): return "The tool crashed (\(signalName(s)))."
        case .limitExceeded(.bufferedOutput):
            return
                "The tool's output exceeded the \(CallRunner.bufferedOutputCap >> 20) MiB the supervisor accepts in one piece."
        case .limitExceeded(let l): return "The tool exceeded its \(l.rawValue) limit."
        case .protocolViolation: return "The tool broke the cell protocol and was stopped."
        case .cannotRun(.hashMismatch):
            return "The tool cannot run: its executable does not match its approved version."
        case .cannotRun(.setup), .cannotRun(.spawn): return "The tool cannot run: its worker could not be started."
        // The name, never the value, and not where it was looked for.
        case .cannotRun(.secretUnavailable(let s)):
            return "The tool cannot run: its secret \(s.name) is not available; an operator must provide it."
        case .cannotRun: return "The tool cannot run on this host as declared."
        case .refused(.arguments(let m)): return "The arguments were refused: \(m)"
        case .definitionDrift:
            return "The tool's server no longer lists the tool definitions that were approved; the call was not "
                + "run and the server is quarantined until an operator reviews it."
        }
    }
}

/// The first syscall a worker was denied (and killed for).
public struct DeniedSyscall: Sendable, Equatable {
    public let syscall: String
    public let architecture: String
}

/// Everything measured about one call.
public struct CallReport: Sendable {
    public var outcome: CallOutcome
    public var exit: ProcessExit.Status?
    public var durationNanoseconds: UInt64
    public var cpuNanoseconds: UInt64
    /// Peak resident memory of the worker after exec (VmHWM), read while it
    /// was still alive; nil when it exited before that could be read (the
    /// kernel's rusage would include the supervisor's pages it borrowed
    /// before exec, so it is not used).
    public var peakMemoryBytes: UInt64?
    /// Bytes the worker wrote (frames and diagnostics).
    public var bytesFromWorker: Int
    /// The end of the worker's stderr/stdout (diagnostics only).
    public var diagnostics: String
    /// Stage timings: clone to exec'd, exec'd to first frame, last frame to reaped.
    public var spawnNanoseconds: UInt64
    public var firstFrameNanoseconds: UInt64
    public var reapNanoseconds: UInt64
    /// The first syscall outside the allowlist the worker tried, also when
    /// something else had ended the call first (the outcome names the
    /// first cause; the attempt is still recorded).
    public var deniedSyscall: DeniedSyscall? = nil
    /// Learn mode: the syscalls outside the allowlist that the worker made
    /// (in first-use order).
    public var learnedSyscalls: [String] = []
    /// With the syscall profiler: each syscall the worker made (ioctl as
    /// "ioctl(request)") and how many times; nil when it was not profiled.
    public var syscallProfile: [String: Int]? = nil
    /// The worker was started ahead of the call (its spawn is not part of
    /// the call's time).
    public var prespawned = false
    /// Wake-ups of the call's poll loop (a loop that spins shows here).
    public var pollWakeups = 0
    /// A server cell: the methods of requests its server sent the client,
    /// each refused.
    public var refusedServerRequests: [String] = []
}

/// A message a worker sent during a call.
public enum WorkerMessage: Sendable, Equatable {
    case progress(progress: Double, total: Double?, message: String?)
    case log(level: String, message: String, data: JSONValue?)
}
