/*
 * probe.h — helpers for the probe cell, which tries forbidden things inside
 * the sandbox so the system tests can assert how they are stopped (in the
 * manner of bubblewrap's tests/try-syscall.c).
 */
#ifndef MCPS_PROBE_H
#define MCPS_PROBE_H

/* Raw syscall with six arguments: the result, or -errno. */
long probe_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);

/* getpid through the i386 entry point (int 0x80): must never return in a
   worker, the filter kills non-native architectures. */
long probe_int80_getpid(void);

/* fork(); in the child _exit(0) at once. Returns the pid or -errno. */
long probe_fork(void);

/* Starts a thread that returns at once and joins it: 0 or an error number. */
int probe_thread(void);

/* Allocates and touches n bytes: 0 on success, -ENOMEM if refused. */
long probe_alloc(unsigned long n, int keep);

/* Burns CPU in `threads` threads (1 = only this one) for `seconds`. */
void probe_spin(int threads, double seconds);

/* Ignores SIGTERM. */
void probe_ignore_sigterm(void);

/* Burns CPU for `seconds` with a SIGXCPU handler installed: the handler
   exits with exit_code if it is >= 0, else the spin stops and 1 is
   returned (0 if no SIGXCPU came). */
int probe_spin_catching_sigxcpu(double seconds, int exit_code);

/* Fills out[] with the numbers of open fds below 1024; returns the count. */
int probe_open_fds(int *out, int max);

/* socket(AF_INET, SOCK_DGRAM) and one datagram to 127.0.0.1:port: the
   bytes sent, or -errno. */
long probe_udp_send(int port);
/* A TCP connection to host (an IPv4 literal):port, closed at once: 0 or -errno. */
long probe_tcp_connect(const char *host, int port);
/* socket(AF_INET, SOCK_RAW, IPPROTO_ICMP): 0 (closed) or -errno. */
long probe_raw_socket(void);

/* socket(AF_UNIX, SOCK_STREAM) and connect() to path (abstract if it
   starts with '@'): 0, or -errno. */
long probe_unix_connect(const char *path);

/* socketpair(AF_UNIX, type) then sendmsg() on one end with a destination
   address (path) attached: the bytes sent, or -errno. */
long probe_pair_sendmsg(int type, const char *path);

/* memfd_create("x", flags), a tiny static program written into it (it
   exits with status 42), then execveat(fd, "", AT_EMPTY_PATH). Returns
   -errno of the step that failed; on success it never returns. */
long probe_memfd_exec(unsigned int flags);

/* The same program written to a file in the working directory (an
   unnamed O_TMPFILE one if anonymous), mode 0700, then execveat on its fd.
   Returns -errno of the exec, 1000 + errno if writing the file failed; on
   success it never returns. */
long probe_scratch_exec(int anonymous);

/* Writes `bytes` into one new file `name` in the working directory, in
   64 KiB chunks: the bytes written before the first error, and that
   error in *error (0 if none). */
long probe_fill(const char *name, long bytes, int *error);

/* Creates up to `count` empty files in the working directory: the number
   created before the first error, and that error in *error (0 if none). */
long probe_many_files(long count, int *error);

/* argv[1] when the probe was started with exactly one argument (a command
   cell), else NULL. */
const char *probe_command_argument(void);

#endif
