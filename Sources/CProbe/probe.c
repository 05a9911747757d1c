#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

long probe_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) {
    long r = syscall(nr, a0, a1, a2, a3, a4, a5);
    return r < 0 ? -errno : r;
}

long probe_int80_getpid(void) {
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    return ret;
#else
    return -ENOSYS;
#endif
}

long probe_fork(void) {
    pid_t p = fork();
    if (p < 0) return -errno;
    if (p == 0) _exit(0);
    int st;
    waitpid(p, &st, 0);
    return p;
}

static void *noop(void *arg) { return arg; }

int probe_thread(void) {
    pthread_t t;
    int rc = pthread_create(&t, NULL, noop, NULL);
    if (rc != 0) return rc;
    return pthread_join(t, NULL);
}

long probe_alloc(unsigned long n, int keep) {
    /* volatile: the compiler may not elide the allocation. */
    volatile char *p = malloc(n);
    if (!p) return -ENOMEM;
    for (unsigned long i = 0; i < n; i += 4096) p[i] = 1;
    /* keep: leave it to the process's exit (a slow teardown). */
    if (!keep) free((void *)p);
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *spin(void *arg) {
    double until = *(double *)arg;
    volatile unsigned long x = 0;
    while (now() < until) x++;
    return NULL;
}

void probe_spin(int threads, double seconds) {
    double until = now() + seconds;
    pthread_t t[16];
    int n = 0;
    for (int i = 1; i < threads && i < 16; i++)
        if (pthread_create(&t[n], NULL, spin, &until) == 0) n++;
    spin(&until);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
}

void probe_ignore_sigterm(void) {
    signal(SIGTERM, SIG_IGN);
}

static volatile sig_atomic_t xcpu_caught = 0;
static int xcpu_exit_code = -1;

static void on_sigxcpu(int sig) {
    (void)sig;
    if (xcpu_exit_code >= 0) _exit(xcpu_exit_code);
    xcpu_caught = 1;
}

int probe_spin_catching_sigxcpu(double seconds, int exit_code) {
    xcpu_exit_code = exit_code;
    signal(SIGXCPU, on_sigxcpu);
    double until = now() + seconds;
    volatile unsigned long x = 0;
    while (!xcpu_caught && now() < until) x++;
    return xcpu_caught;
}

int probe_open_fds(int *out, int max) {
    int n = 0;
    for (int fd = 0; fd < 1024 && n < max; fd++)
        if (fcntl(fd, F_GETFD) >= 0) out[n++] = fd;
    return n;
}
