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

#endif
