#include "probe.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
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

long probe_udp_send(int port) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long n = sendto(s, "escape", 6, 0, (struct sockaddr *)&a, sizeof(a));
    long r = n < 0 ? -errno : n;
    close(s);
    return r;
}

long probe_tcp_connect(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return -EINVAL;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    long r = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0 ? 0 : -errno;
    close(s);
    return r;
}

long probe_raw_socket(void) {
    int s = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (s < 0) return -errno;
    close(s);
    return 0;
}

static socklen_t unix_address(const char *path, struct sockaddr_un *a) {
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof(a->sun_path)) len = sizeof(a->sun_path) - 1;
    memcpy(a->sun_path, path, len);
    /* "@name": an abstract address (leading NUL, no terminator). */
    if (path[0] == '@') {
        a->sun_path[0] = 0;
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return (socklen_t)sizeof(*a);
}

long probe_unix_connect(const char *path) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -errno;
    struct sockaddr_un a;
    socklen_t len = unix_address(path, &a);
    long r = connect(s, (struct sockaddr *)&a, len) == 0 ? 0 : -errno;
    close(s);
    return r;
}

long probe_pair_sendmsg(int type, const char *path) {
    int sv[2];
    if (socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
    struct sockaddr_un a;
    socklen_t len = unix_address(path, &a);
    char data[] = "escape";
    struct iovec iov = {.iov_base = data, .iov_len = 6};
    struct msghdr m = {.msg_name = &a, .msg_namelen = len, .msg_iov = &iov, .msg_iovlen = 1};
    long n = sendmsg(sv[0], &m, MSG_NOSIGNAL);
    long r = n < 0 ? -errno : n;
    close(sv[0]);
    close(sv[1]);
    return r;
}

/* A complete x86-64 program: exit(42). ELF header, one PT_LOAD, 12 bytes
   of code (mov edi, 42; mov eax, 60; syscall). */
static const unsigned char tiny_elf[] = {
    0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    2, 0, 0x3e, 0, 1, 0, 0, 0,                      /* ET_EXEC, x86-64, version */
    0x78, 0, 0x40, 0, 0, 0, 0, 0,                   /* entry 0x400078 */
    0x40, 0, 0, 0, 0, 0, 0, 0,                      /* phoff 64 */
    0, 0, 0, 0, 0, 0, 0, 0,                         /* shoff */
    0, 0, 0, 0, 0x40, 0, 0x38, 0, 1, 0, 0, 0, 0, 0, 0, 0, /* flags, ehsize, phentsize, phnum, sh* */
    1, 0, 0, 0, 5, 0, 0, 0,                         /* PT_LOAD, R+X */
    0, 0, 0, 0, 0, 0, 0, 0,                         /* offset 0 */
    0, 0, 0x40, 0, 0, 0, 0, 0,                      /* vaddr 0x400000 */
    0, 0, 0x40, 0, 0, 0, 0, 0,                      /* paddr */
    0x84, 0, 0, 0, 0, 0, 0, 0,                      /* filesz 132 */
    0x84, 0, 0, 0, 0, 0, 0, 0,                      /* memsz 132 */
    0, 0x10, 0, 0, 0, 0, 0, 0,                      /* align 0x1000 */
    0xbf, 42, 0, 0, 0, 0xb8, 60, 0, 0, 0, 0x0f, 0x05,
};

long probe_memfd_exec(unsigned int flags) {
    int fd = (int)syscall(SYS_memfd_create, "x", flags);
    if (fd < 0) return -errno;
    if (write(fd, tiny_elf, sizeof(tiny_elf)) != (ssize_t)sizeof(tiny_elf)) return -errno;
    char *argv[] = {"x", NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
    return -errno;
}

long probe_scratch_exec(int anonymous) {
    int fd = anonymous ? open(".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0700)
                       : open("prog", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    /* A failure before the exec is 1000 + errno, so it cannot pass for a
       refused exec. */
    if (fd < 0) return 1000 + errno;
    if (write(fd, tiny_elf, sizeof(tiny_elf)) != (ssize_t)sizeof(tiny_elf)) return 1000 + errno;
    char *argv[] = {"x", NULL};
    char *envp[] = {NULL};
    syscall(SYS_execveat, fd, "", argv, envp, AT_EMPTY_PATH);
    return -errno;
}

long probe_fill(const char *name, long bytes, int *error) {
    *error = 0;
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        *error = errno;
        return 0;
    }
    static char chunk[65536];
    memset(chunk, 'A', sizeof(chunk));
    long done = 0;
    while (done < bytes) {
        long want = bytes - done < (long)sizeof(chunk) ? bytes - done : (long)sizeof(chunk);
        ssize_t n = write(fd, chunk, (size_t)want);
        if (n < 0) {
            *error = errno;
            break;
        }
        done += n;
    }
    close(fd);
    return done;
}

long probe_many_files(long count, int *error) {
    *error = 0;
    char name[32];
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof(name), "f%ld", i);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            *error = errno;
            return i;
        }
        close(fd);
    }
    return count;
}

/* glibc passes argc and argv to constructors; Swift's CommandLine reads
   /proc/self/cmdline in a static executable, which Landlock denies. */
static const char *command_argument;

__attribute__((constructor)) static void capture_arguments(int argc, char **argv, char **envp) {
    (void)envp;
    command_argument = argc == 2 ? argv[1] : NULL;
}

const char *probe_command_argument(void) {
    return command_argument;
}
