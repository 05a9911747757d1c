#if canImport(Glibc)
import Glibc
#endif

/// A small pthread mutex (the supervisor's hot path avoids actors here: the
/// spawning thread is a plain thread, not a Swift concurrency task).
public final class Mutex: @unchecked Sendable {
    private var m = pthread_mutex_t()
    public init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    public func lock() { pthread_mutex_lock(&m) }
    public func unlock() { pthread_mutex_unlock(&m) }
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}
