#if canImport(Glibc)
import Glibc
#endif

/// Diagnostics on stderr that can never take the process down.
/// `FileHandle.standardError.write` traps when the write fails (EPIPE on a
/// closed pipe, EBADF on a closed descriptor); a supervisor must outlive its
/// diagnostics, so every diagnostic write goes through here.
public enum Diagnostics {
    /// Writes `text` to fd 2 with write(2), retrying EINTR and short writes;
    /// any other error drops the rest of the text silently. SIGPIPE is
    /// ignored by the supervisor (`run`); other commands die of it as any
    /// command-line tool does, never of a trap.
    public static func write(_ text: String) {
        var text = text
        text.withUTF8 { buf in
            var off = 0
            while off < buf.count {
                let n = Glibc.write(2, buf.baseAddress! + off, buf.count - off)
                if n > 0 {
                    off += n
                } else if n < 0 && Glibc.errno == EINTR {
                    continue
                } else {
                    return
                }
            }
        }
    }

    /// `write` with a newline.
    public static func line(_ text: String) { write(text + "\n") }
}
