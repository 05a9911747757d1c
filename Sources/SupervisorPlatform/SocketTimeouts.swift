import Glibc

extension FileDescriptor {
    /// Bounds every later blocking `read` and `write` on this socket: one
    /// that waits longer fails with EAGAIN. The telemetry exporter's thread
    /// uses it so that a collector that accepts and never answers cannot
    /// hold it. The corresponding C function is `setsockopt` with
    /// `SO_RCVTIMEO` and `SO_SNDTIMEO`.
    public func setSocketTimeouts(milliseconds: Int) throws(SystemError) {
        var tv = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        let size = socklen_t(MemoryLayout<timeval>.size)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            if setsockopt(rawValue, SOL_SOCKET, option, &tv, size) != 0 {
                throw SystemError("setsockopt", errno: Glibc.errno)
            }
        }
    }
}
