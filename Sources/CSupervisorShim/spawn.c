/*
 * spawn.c — everything a worker runs between clone() and execveat().
 *
 * Why C, and why this shape
 * -------------------------
 * The supervisor is multi-threaded. After clone() only async-signal-safe
 * operations are allowed until exec: no malloc, no locks, no Swift runtime,
 * no libseccomp/libcap. We use clone(CLONE_VM | CLONE_VFORK) like
 * posix_spawn: the child borrows the parent's memory (so nothing is copied,
 * whatever the supervisor's RSS) and the calling thread is suspended until
 * the child has exec'd or exited. The child therefore must not write to
 * shared memory except the one result slot that the parent reads after it
 * resumes (as glibc's posix_spawn does), and it runs on its own stack.
 *
 * glibc wrappers that only issue one syscall are safe here. The set*id
 * family is not (glibc broadcasts to all threads it believes exist), so ids
 * are changed with raw syscall(). errno is written by the wrappers into the
 * parent thread's TLS slot; the parent ignores errno across the clone.
 *
 * The order follows nsjail, bubblewrap and minijail (see
 * docs/architecture.md): privileged steps first, seccomp last, then exec of
 * the verified descriptor. Each failure is reported as (stage, errno) and the
 * child exits with 127.
 */
#include "supervisor_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <pthread.h>
#include <net/if.h>
#include <netinet/in.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif

#ifndef LANDLOCK_RULE_PATH_BENEATH
#define LANDLOCK_RULE_PATH_BENEATH 1
#endif

/* struct landlock_path_beneath_attr (packed, as in <linux/landlock.h>). */
struct mcps_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

#define CHILD_STACK_SIZE (128 * 1024)
/* Child fd layout: 0-4 the worker's (stdin, stdout, stderr, request,
   response), 5 the worker's connection-broker socket (if any); 6 the
   executable, 7 the Landlock ruleset, 8 the socket for the seccomp listener,
   9 the socket for the egress listener. Everything is first copied to
   HIGH_FD or above. */
#define MCPS_CHILD_FDS 10
#define MCPS_WORKER_FDS 6
#define HIGH_FD 64

struct child_args {
    const mcps_spawn_config *config;
    /* Written by the child, read by the parent after the vfork resumes. */
    volatile int stage;
    volatile int error;
};

/* Records the failing stage and leaves. Only touches the result slot. */
__attribute__((noreturn)) static void child_fail(struct child_args *a, int stage) {
    a->error = errno;
    a->stage = stage;
    syscall(SYS_exit_group, 127);
    __builtin_unreachable();
}

/* Kernel layout of struct sigaction for rt_sigaction(2); glibc's sigaction()
   refuses the signals it reserves for itself (32, 33), which the child must
   reset as well. */
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

static int write_file(const char *path, const char *contents) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = strlen(contents);
    ssize_t n = write(fd, contents, len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == (ssize_t)len ? 0 : -1;
}

static int send_fd(int sock, int fd) {
    char dummy = 'L';
    struct iovec iov = {.iov_base = &dummy, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static int child_main(void *arg) {
    struct child_args *a = arg;
    const mcps_spawn_config *c = a->config;

    /* 1. Signals: default dispositions, so no handler of the parent's can
          run in this child (it would run on the parent's memory). All
          signals stay blocked until just before seccomp. */
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct kernel_sigaction ksa = {.handler = SIG_DFL};
        if (syscall(SYS_rt_sigaction, sig, &ksa, NULL, sizeof(uint64_t)) != 0 && errno != EINVAL)
            child_fail(a, MCPS_STAGE_SIGNALS);
    }

    /* 2. A new user namespace (unprivileged supervisor): map our own
          uid/gid so files in scratch keep their owner. The supervisor is
          non-dumpable, which makes the /proc files of every task on its
          memory root's, these map files included: the memory (shared with
          the parent until exec) is dumpable for these three writes only,
          and mcps_spawn restores the parent's setting in any case. */
    if (c->namespace_flags & CLONE_NEWUSER) {
        int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        if (dumpable == 0 && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) child_fail(a, MCPS_STAGE_USERNS);
        int failed = write_file("/proc/self/setgroups", "deny") != 0 ||
                     (c->uid_map && write_file("/proc/self/uid_map", c->uid_map) != 0) ||
                     (c->gid_map && write_file("/proc/self/gid_map", c->gid_map) != 0);
        int saved = errno;
        if (dumpable == 0) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        errno = saved;
        if (failed) child_fail(a, MCPS_STAGE_USERNS);
    }

    /* 3. File descriptors: copy everything we still need above the range
          in use (F_DUPFD picks free slots, so nothing is clobbered), place
          the worker fds at 0-5 and our three at 6-8, then close every
          other fd: the supervisor's descriptors never reach the worker, and
          the table is small again before RLIMIT_NOFILE applies. A slot with
          nothing to place is closed, so no inherited fd hides there. */
    int src[MCPS_CHILD_FDS] = {c->stdin_fd,  c->stdout_fd, c->stderr_fd,           c->request_fd,
                               c->response_fd, c->broker_fd, c->exec_fd, c->landlock_ruleset_fd,
                               c->notify_socket_fd, c->egress_socket_fd};
    int moved[MCPS_CHILD_FDS];
    for (int i = 0; i < MCPS_CHILD_FDS; i++) {
        moved[i] = -1;
        if (src[i] < 0) continue;
        moved[i] = fcntl(src[i], F_DUPFD_CLOEXEC, HIGH_FD);
        if (moved[i] < 0) child_fail(a, MCPS_STAGE_FDS);
    }
    for (int i = 0; i < MCPS_CHILD_FDS; i++) {
        if (moved[i] < 0) {
            close(i);
            continue;
        }
        /* 0-5 survive exec; 6-9 are only for setup. */
        if (dup3(moved[i], i, i < MCPS_WORKER_FDS ? 0 : O_CLOEXEC) != i) child_fail(a, MCPS_STAGE_FDS);
    }
    if (syscall(SYS_close_range, MCPS_CHILD_FDS, ~0U, 0) != 0) child_fail(a, MCPS_STAGE_FDS);
    int exec_fd = 6;
    int ruleset_fd = c->landlock_ruleset_fd >= 0 ? 7 : -1;
    int notify_fd = c->notify_socket_fd >= 0 ? 8 : -1;
    int egress_fd = c->egress_socket_fd >= 0 ? 9 : -1;

    /* 4. Own session: no controlling terminal (TIOCSTI needs one). */
    if (setsid() < 0) child_fail(a, MCPS_STAGE_SESSION);

    /* 4a. Egress: the worker's network namespace (CLONE_NEWNET) starts with
           only `lo`, down. Bring it up (needs CAP_NET_ADMIN in the
           namespace, so before the capabilities go), then open the one
           endpoint the worker may reach, a TCP listener on
           127.0.0.1:egress_port, and send it to the supervisor: a socket
           stays in the namespace it was created in, so the supervisor's
           proxy accepts there the connections made inside. The child keeps
           no copy (close-on-exec, and closed here). */
    if (egress_fd >= 0) {
        if (!(c->namespace_flags & CLONE_NEWNET)) {
            errno = EINVAL;
            child_fail(a, MCPS_STAGE_EGRESS);
        }
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0) child_fail(a, MCPS_STAGE_EGRESS);
        struct ifreq ifr;
        memset(&ifr, 0, sizeof(ifr));
        memcpy(ifr.ifr_name, "lo", 3);
        if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) child_fail(a, MCPS_STAGE_EGRESS);
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) child_fail(a, MCPS_STAGE_EGRESS);
        close(s);
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l < 0) child_fail(a, MCPS_STAGE_EGRESS);
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons(c->egress_port);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(l, (struct sockaddr *)&sin, sizeof(sin)) != 0) child_fail(a, MCPS_STAGE_EGRESS);
        if (listen(l, 64) != 0) child_fail(a, MCPS_STAGE_EGRESS);
        if (send_fd(egress_fd, l) != 0) child_fail(a, MCPS_STAGE_EGRESS);
        close(l);
        close(egress_fd);
    }

    /* 4b. Scratch: a tmpfs bounded in bytes and inodes by the kernel, in
           the worker's own mount namespace (privileged step: before the
           capabilities go). Mounts become slaves first, so the tmpfs never
           propagates to the supervisor's namespace. Landlock follows a
           path up through a mount point without looking at the directory
           the mount hides, so the scratch rule must name the tmpfs root. */
    if (c->scratch_dir) {
        if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) child_fail(a, MCPS_STAGE_SCRATCH);
        if (mount("tmpfs", c->scratch_dir, "tmpfs", MS_NOSUID | MS_NODEV, c->scratch_mount_options) != 0)
            child_fail(a, MCPS_STAGE_SCRATCH);
        if (ruleset_fd >= 0) {
            int root = (int)syscall(SYS_openat, AT_FDCWD, c->scratch_dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (root < 0) child_fail(a, MCPS_STAGE_SCRATCH);
            struct mcps_path_beneath rule = {.allowed_access = c->scratch_access, .parent_fd = root};
            if (syscall(SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0)
                child_fail(a, MCPS_STAGE_SCRATCH);
            close(root);
        }
    }

    /* 5. Resource limits (core dumps are always off: the caller passes
          RLIMIT_CORE 0). */
    for (int i = 0; i < c->rlimit_count; i++) {
        struct rlimit rl = {.rlim_cur = c->rlimits[i].soft, .rlim_max = c->rlimits[i].hard};
        if (syscall(SYS_setrlimit, c->rlimits[i].resource, &rl) != 0) child_fail(a, MCPS_STAGE_RLIMITS);
    }

    /* 6. Bounding set, while we still may (needs CAP_SETPCAP). */
    if (c->drop_bounding_set) {
        for (int cap = 0; cap <= c->last_cap; cap++) {
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) child_fail(a, MCPS_STAGE_BOUNDING);
        }
    }

    /* 7. Identity: no supplementary groups, then gid, then uid. */
    if (c->change_ids) {
        if (syscall(SYS_setgroups, 0, NULL) != 0) child_fail(a, MCPS_STAGE_IDS);
        if (syscall(SYS_setresgid, c->gid, c->gid, c->gid) != 0) child_fail(a, MCPS_STAGE_IDS);
        if (syscall(SYS_setresuid, c->uid, c->uid, c->uid) != 0) child_fail(a, MCPS_STAGE_IDS);
    }

    /* 8. No capabilities in any set. */
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof(data));
    if (syscall(SYS_capset, &hdr, data) != 0) child_fail(a, MCPS_STAGE_CAPS);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        child_fail(a, MCPS_STAGE_CAPS);

    /* 9. Die with the supervisor thread. Set after the identity change,
           which clears the parent-death signal (prctl(2)). If the
           supervisor already died, getppid() changed (not checkable inside
           a new PID namespace, where the parent is invisible: 0). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) child_fail(a, MCPS_STAGE_PDEATHSIG);
    if (!(c->namespace_flags & CLONE_NEWPID) && getppid() != c->parent_pid) {
        errno = ESRCH;
        child_fail(a, MCPS_STAGE_PDEATHSIG);
    }

    /* 10. Scratch directory, as the final uid (proves it can enter it). */
    if (chdir(c->workdir) != 0) child_fail(a, MCPS_STAGE_CHDIR);

    /* 11. No privilege gain through exec (setuid bits, file capabilities);
           also required for unprivileged seccomp and Landlock. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(a, MCPS_STAGE_NO_NEW_PRIVS);

    /* 12. Landlock file, network and scope rules. */
    if (ruleset_fd >= 0) {
        if (syscall(SYS_landlock_restrict_self, ruleset_fd, 0) != 0) child_fail(a, MCPS_STAGE_LANDLOCK);
        close(ruleset_fd);
    }

    /* 13. The worker starts with an empty signal mask. Done before seccomp
           so that rt_sigprocmask need not be in every filter. */
    sigset_t empty;
    sigemptyset(&empty);
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof(uint64_t)) != 0)
        child_fail(a, MCPS_STAGE_SIGMASK);

    /* 14. seccomp, last. From here on only the calls every filter allows
           (sendmsg, close, execveat, exit_group) may be made: anything else
           would wait for a supervisor that is suspended in vfork. */
    if (c->seccomp_filter) {
        struct sock_fprog prog = {.len = c->seccomp_filter_len, .filter = (struct sock_filter *)c->seccomp_filter};
        long listener;
        if (c->seccomp_profiler_filter && notify_fd >= 0) {
            /* 14a. The syscall profiler: a filter that sends every call to
                    the listener (the kernel allows one listener per task,
                    so it is this one), then the allowlist with no listener,
                    killing what it refuses. The kernel takes the strictest
                    of the two answers, so the profiler sees only the calls
                    the allowlist lets through and its answer (continue)
                    can never let through one it refuses. The profiler
                    passes seccomp itself, so the second install is not
                    held for a listener nobody reads yet. */
            struct sock_fprog profiler = {.len = c->seccomp_profiler_filter_len,
                                          .filter = (struct sock_filter *)c->seccomp_profiler_filter};
            listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &profiler);
            if (listener < 0) child_fail(a, MCPS_STAGE_SECCOMP);
            if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) child_fail(a, MCPS_STAGE_SECCOMP);
        } else {
            unsigned long flags = notify_fd >= 0 ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0;
            listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
            if (listener < 0) child_fail(a, MCPS_STAGE_SECCOMP);
        }
        if (notify_fd >= 0) {
            /* 15. The listener goes to the supervisor; the worker keeps no
                   copy (a worker holding it could approve its own calls). */
            if (send_fd(notify_fd, (int)listener) != 0) child_fail(a, MCPS_STAGE_LISTENER);
            close((int)listener);
            close(notify_fd);
        }
    }

    /* 16. Exec exactly the descriptor whose contents were verified. */
    syscall(SYS_execveat, exec_fd, "", c->argv, c->envp, AT_EMPTY_PATH);
    child_fail(a, MCPS_STAGE_EXEC);
}

/* One child stack per spawning thread, reused: calls on a thread are serial. */
static __thread void *tls_stack;

int mcps_spawn(const mcps_spawn_config *config, mcps_spawn_result *result) {
    result->pid = -1;
    result->pidfd = -1;
    result->stage = MCPS_STAGE_NONE;
    result->error = 0;

    if (!tls_stack) {
        void *s = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (s == MAP_FAILED) {
            result->stage = MCPS_STAGE_CLONE;
            result->error = errno;
            return -1;
        }
        tls_stack = s;
    }

    struct child_args args = {.config = config, .stage = MCPS_STAGE_NONE, .error = 0};

    /* Block every signal so no handler runs in the child before it has reset
       the dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);

    int pidfd = -1;
    int flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD | config->namespace_flags;
    /* The child may change the shared memory's dumpable flag (stage 2). */
    int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    pid_t pid = clone(child_main, (char *)tls_stack + CHILD_STACK_SIZE, flags, &args, &pidfd);
    int clone_errno = errno;
    if (dumpable >= 0 && prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable)
        prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0);

    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (pid < 0) {
        result->stage = MCPS_STAGE_CLONE;
        result->error = clone_errno;
        return -1;
    }
    if (args.stage != MCPS_STAGE_NONE) {
        int code, status;
        struct rusage ru;
        mcps_pidfd_wait(pidfd, 0, &code, &status, &ru);
        close(pidfd);
        result->stage = args.stage;
        result->error = args.error;
        return -1;
    }
    result->pid = pid;
    result->pidfd = pidfd;
    return 0;
}

const char *mcps_stage_name(int stage) {
    switch (stage) {
    case MCPS_STAGE_NONE: return "none";
    case MCPS_STAGE_CLONE: return "clone";
    case MCPS_STAGE_SIGNALS: return "signals";
    case MCPS_STAGE_USERNS: return "user-namespace";
    case MCPS_STAGE_FDS: return "file-descriptors";
    case MCPS_STAGE_SESSION: return "setsid";
    case MCPS_STAGE_PDEATHSIG: return "parent-death-signal";
    case MCPS_STAGE_RLIMITS: return "rlimits";
    case MCPS_STAGE_BOUNDING: return "capability-bounding-set";
    case MCPS_STAGE_IDS: return "uid-gid";
    case MCPS_STAGE_CAPS: return "capabilities";
    case MCPS_STAGE_CHDIR: return "chdir-scratch";
    case MCPS_STAGE_NO_NEW_PRIVS: return "no-new-privs";
    case MCPS_STAGE_LANDLOCK: return "landlock";
    case MCPS_STAGE_SIGMASK: return "signal-mask";
    case MCPS_STAGE_SECCOMP: return "seccomp";
    case MCPS_STAGE_LISTENER: return "seccomp-listener";
    case MCPS_STAGE_EXEC: return "exec";
    case MCPS_STAGE_SCRATCH: return "scratch-mount";
    case MCPS_STAGE_EGRESS: return "egress-listener";
    default: return "unknown";
    }
}
