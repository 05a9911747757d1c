/*
 * sys.c — parent-side syscall wrappers for the SupervisorPlatform module.
 *
 * Nothing here runs in a worker. These exist because glibc 2.36 lacks
 * wrappers for them (pidfd_send_signal, landlock_*, openat2, the fifth
 * argument of waitid) or because Swift cannot call variadic C functions
 * (ioctl, syscall, prctl), and the connection broker's resolve/connect/send
 * (sockaddr handling is shorter and clearer in C than through Swift's
 * unsafe pointers).
 */
#include "supervisor_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netdb.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* The kernel's structs for Landlock ABI 4+ and 6, which Debian's header lacks.
   Their layout is fixed by the kernel ABI. */
struct mcps_landlock_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
struct mcps_landlock_net_port_attr {
    uint64_t allowed_access;
    uint64_t port;
};
_Static_assert(sizeof(struct mcps_landlock_ruleset_attr) == 24, "landlock_ruleset_attr v6 is 24 bytes");
_Static_assert(sizeof(struct mcps_landlock_net_port_attr) == 16, "landlock_net_port_attr is 16 bytes");
#define MCPS_LANDLOCK_RULE_NET_PORT 2

int mcps_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int mcps_pidfd_wait(int pidfd, int options, int *code, int *status, struct rusage *usage) {
    siginfo_t info;
    for (;;) {
        memset(&info, 0, sizeof(info));
        long r = syscall(SYS_waitid, P_PIDFD, pidfd, &info, WEXITED | options, usage);
        if (r == 0) break;
        if (errno != EINTR) return -1;
    }
    *code = info.si_code;
    *status = info.si_status;
    return info.si_pid == 0 ? 1 : 0; /* 1: WNOHANG and not yet exited */
}

int mcps_landlock_abi(void) {
    return (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
}

int mcps_landlock_create_ruleset(uint64_t handled_fs, uint64_t handled_net, uint64_t scoped) {
    struct mcps_landlock_ruleset_attr attr = {
        .handled_access_fs = handled_fs, .handled_access_net = handled_net, .scoped = scoped};
    /* The kernel accepts a shorter struct from older ABIs; pass the size that
       covers the last non-zero field so older kernels do not see unknown
       fields. */
    size_t size = scoped ? 24 : handled_net ? 16 : 8;
    return (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
}

int mcps_landlock_add_path_rule(int ruleset_fd, int parent_fd, uint64_t allowed) {
    struct landlock_path_beneath_attr attr = {.allowed_access = allowed, .parent_fd = parent_fd};
    return (int)syscall(SYS_landlock_add_rule, ruleset_fd, LANDLOCK_RULE_PATH_BENEATH, &attr, 0);
}

int mcps_landlock_add_net_rule(int ruleset_fd, uint64_t port, uint64_t allowed) {
    struct mcps_landlock_net_port_attr attr = {.allowed_access = allowed, .port = port};
    return (int)syscall(SYS_landlock_add_rule, ruleset_fd, MCPS_LANDLOCK_RULE_NET_PORT, &attr, 0);
}

int mcps_seccomp_notif_sizes(uint16_t *notif, uint16_t *resp, uint16_t *data) {
    struct seccomp_notif_sizes sizes;
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) return -1;
    *notif = sizes.seccomp_notif;
    *resp = sizes.seccomp_notif_resp;
    *data = sizes.seccomp_data;
    return 0;
}

int mcps_seccomp_notif_recv(int listener_fd, void *buffer, uint16_t size, uint64_t *id, uint32_t *pid,
                            int32_t *nr, uint32_t *arch, uint64_t *args) {
    if (size < sizeof(struct seccomp_notif)) {
        errno = EINVAL;
        return -1;
    }
    memset(buffer, 0, size);
    if (ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_RECV, buffer) != 0) return -1;
    struct seccomp_notif *n = buffer;
    *id = n->id;
    *pid = n->pid;
    *nr = n->data.nr;
    *arch = n->data.arch;
    for (int i = 0; i < 6; i++) args[i] = n->data.args[i];
    return 0;
}

int mcps_seccomp_notif_deny(int listener_fd, uint64_t id, int error) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof(resp));
    resp.id = id;
    resp.error = -error;
    return ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

int mcps_seccomp_notif_continue(int listener_fd, uint64_t id) {
    struct seccomp_notif_resp resp;
    memset(&resp, 0, sizeof(resp));
    resp.id = id;
    resp.flags = 1; /* SECCOMP_USER_NOTIF_FLAG_CONTINUE */
    return ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

int mcps_seccomp_notif_sync_wakeup(int listener_fd) {
    /* SECCOMP_IOCTL_NOTIF_SET_FLAGS = SECCOMP_IOW(4, __u64) and
       SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6); older headers lack them. */
    unsigned long set_flags = _IOW('!', 4, uint64_t);
    return ioctl(listener_fd, set_flags, (uint64_t)1);
}

int mcps_recv_fd(int socket_fd) {
    char dummy;
    struct iovec iov = {.iov_base = &dummy, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n;
    do {
        n = recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (n != 1 || !c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS ||
        c->cmsg_len != CMSG_LEN(sizeof(int))) {
        errno = EPROTO;
        return -1;
    }
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

int mcps_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    long r;
    do {
        r = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    } while (r < 0 && errno == EINTR);
    return (int)r;
}

int mcps_cap_last_cap(void) {
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return CAP_LAST_CAP;
    char buf[16] = {0};
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return CAP_LAST_CAP;
    int v = 0;
    for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (buf[i] - '0');
    return v;
}

int mcps_has_effective_cap(int cap) {
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &hdr, data) != 0) return 0;
    return (data[cap / 32].effective >> (cap % 32)) & 1;
}

int mcps_set_non_dumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static int probe_child(void *arg) {
    (void)arg;
    syscall(SYS_exit_group, 0);
    return 0;
}

int mcps_probe_clone(int flags) {
    static char stack[16384] __attribute__((aligned(16)));
    /* Serialised by the caller (doctor / capability probe at startup). */
    pid_t pid = clone(probe_child, stack + sizeof(stack), flags | SIGCHLD | CLONE_VFORK | CLONE_VM, NULL);
    if (pid < 0) return -1;
    int status;
    while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR) {}
    return 0;
}

int mcps_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int mcps_memfd_sealable(const char *name) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int mcps_memfd_seal(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE);
}

int mcps_open_path(const char *path) {
    int fd;
    do {
        fd = open(path, O_PATH | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* ---- connection broker ---------------------------------------------------- */

int mcps_resolve(const char *host, mcps_address *out, int max) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) return rc < 0 ? rc : -rc;
    int n = 0;
    for (struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
        memset(&out[n], 0, sizeof(out[n]));
        if (ai->ai_family == AF_INET) {
            out[n].family = AF_INET;
            memcpy(out[n].bytes, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, 4);
        } else if (ai->ai_family == AF_INET6) {
            out[n].family = AF_INET6;
            memcpy(out[n].bytes, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, 16);
        } else {
            continue;
        }
        n++;
    }
    freeaddrinfo(res);
    return n;
}

const char *mcps_resolve_error(int code) { return gai_strerror(code); }

int mcps_address_text(const mcps_address *a, char *buf, size_t size) {
    return inet_ntop(a->family, a->bytes, buf, (socklen_t)size) ? 0 : -1;
}

int mcps_parse_address(const char *host, mcps_address *out) {
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, host, out->bytes) == 1) {
        out->family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, host, out->bytes) == 1) {
        out->family = AF_INET6;
        return 1;
    }
    return 0;
}

int mcps_tcp_connect(const mcps_address *a, int port, int timeout_ms, int cancel_fd) {
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    if (a->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        memcpy(&sin->sin_addr, a->bytes, 4);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        memcpy(&sin6->sin6_addr, a->bytes, 16);
        len = sizeof(*sin6);
    }
    int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
    if (fd < 0) return -1;
    int rc = connect(fd, (struct sockaddr *)&ss, len);
    if (rc != 0 && errno != EINPROGRESS) goto fail;
    if (rc != 0) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLOUT}, {.fd = cancel_fd, .events = POLLIN}};
        int n;
        do { n = poll(p, cancel_fd >= 0 ? 2 : 1, timeout_ms); } while (n < 0 && errno == EINTR);
        if (n == 0) { errno = ETIMEDOUT; goto fail; }
        if (n < 0) goto fail;
        if (cancel_fd >= 0 && (p[1].revents & POLLIN)) { errno = ECANCELED; goto fail; }
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0) goto fail;
        if (err != 0) { errno = err; goto fail; }
    }
    /* The worker gets an ordinary blocking socket. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int mcps_send_message(int socket_fd, const void *data, size_t length, int fd) {
    struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof(u.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(socket_fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT); } while (n < 0 && errno == EINTR);
    return n == (ssize_t)length ? 0 : -1;
}
