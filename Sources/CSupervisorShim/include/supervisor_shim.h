/*
 * supervisor_shim.h — the C side of mcp-supervisor.
 *
 * Three kinds of code live behind this header:
 *
 *  1. spawn.c: mcps_spawn(), the only code that runs in a worker between
 *     clone() and execveat(). It is C because after clone(CLONE_VM|CLONE_VFORK)
 *     in a multi-threaded process only async-signal-safe operations are
 *     allowed: no allocation, no locks, no Swift runtime, no libseccomp or
 *     libcap. It uses raw syscalls only.
 *
 *  2. sys.c: thin wrappers, called by the supervisor process (never the
 *     child), for syscalls and ioctls that glibc does not wrap or that Swift
 *     cannot call because they are variadic, and the connection broker's
 *     resolve/connect/send.
 *
 *  3. seccomp.c: compiling allowlists into BPF with libseccomp, in the
 *     supervisor process only (never in the child).
 *
 * Only the SupervisorPlatform Swift module imports this header
 * (tools/check-imports.sh enforces it for the supervisor's modules).
 */
#ifndef MCP_SUPERVISOR_SHIM_H
#define MCP_SUPERVISOR_SHIM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/resource.h>
#include <signal.h>

#pragma clang assume_nonnull begin

/*
 * The child's setup stages. A failure is reported as (stage, errno). The
 * numbering is part of the spawn-failure messages and of the security log;
 * new stages are appended, never renumbered, so the values follow the order
 * the stages run in except where a stage was added later: MCPS_STAGE_SCRATCH
 * (18) runs between MCPS_STAGE_SESSION and MCPS_STAGE_RLIMITS.
 * SupervisorPlatform's SpawnStage mirrors this enum (a test checks every case
 * against mcps_stage_name).
 */
typedef enum {
    MCPS_STAGE_NONE = 0,
    MCPS_STAGE_CLONE = 1,        /* parent: clone() itself failed */
    MCPS_STAGE_SIGNALS = 2,      /* reset every signal disposition to default */
    MCPS_STAGE_USERNS = 3,       /* write setgroups/uid_map/gid_map for a new user namespace */
    MCPS_STAGE_FDS = 4,          /* place the worker's fds 0-5 and the setup fds 6-8, close all others */
    MCPS_STAGE_SESSION = 5,      /* setsid() */
    MCPS_STAGE_RLIMITS = 6,      /* setrlimit for each limit */
    MCPS_STAGE_BOUNDING = 7,     /* drop every capability from the bounding set */
    MCPS_STAGE_IDS = 8,          /* setgroups, setresgid, setresuid */
    MCPS_STAGE_CAPS = 9,         /* capset to zero, clear ambient capabilities */
    MCPS_STAGE_PDEATHSIG = 10,   /* PR_SET_PDEATHSIG (after the id change, which clears it) + parent re-check */
    MCPS_STAGE_CHDIR = 11,       /* chdir into the call's scratch directory */
    MCPS_STAGE_NO_NEW_PRIVS = 12,/* PR_SET_NO_NEW_PRIVS */
    MCPS_STAGE_LANDLOCK = 13,    /* landlock_restrict_self */
    MCPS_STAGE_SIGMASK = 14,     /* unblock all signals for the worker */
    MCPS_STAGE_SECCOMP = 15,     /* install the precompiled filter (last restriction) */
    MCPS_STAGE_LISTENER = 16,    /* hand the seccomp listener fd to the supervisor */
    MCPS_STAGE_EXEC = 17,        /* execveat(exec_fd, "", AT_EMPTY_PATH) */
    MCPS_STAGE_SCRATCH = 18,     /* private mounts, a bounded tmpfs on scratch, its Landlock rule
                                    (runs after MCPS_STAGE_SESSION, before MCPS_STAGE_RLIMITS) */
    MCPS_STAGE_EGRESS = 19,      /* in the new network namespace: lo up, a TCP listener on
                                    127.0.0.1:egress_port sent to the supervisor (runs after
                                    MCPS_STAGE_SESSION, before MCPS_STAGE_SCRATCH) */
} mcps_stage;

typedef struct {
    int resource;     /* RLIMIT_* */
    uint64_t soft;
    uint64_t hard;
} mcps_rlimit;

/*
 * Everything the child needs, prepared by the parent. The child only reads
 * this structure (it shares the parent's memory until exec).
 */
typedef struct {
    /* The verified executable, opened (or sealed in a memfd) by the parent. */
    int exec_fd;
    char *_Nullable const *_Nullable argv;
    char *_Nullable const *_Nullable envp;

    /* Become fds 0, 1, 2, 3 and 4 in the worker. */
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    int request_fd;
    int response_fd;
    /* Becomes fd 5 if >= 0: the worker's end of its connection-broker
       socket (a cell that declares network hosts); fd 5 is closed otherwise. */
    int broker_fd;

    /* In the child, fds 6, 7, 8 and 9 hold exec_fd, landlock_ruleset_fd,
       notify_socket_fd and egress_socket_fd during setup only
       (close-on-exec); every other descriptor of the supervisor is closed
       before any other stage. */

    /* If >= 0 (requires CLONE_NEWNET in namespace_flags): the egress stage.
       In the worker's new network namespace the child brings `lo` up,
       opens a TCP socket listening on 127.0.0.1:egress_port, sends it over
       this unix socket (SCM_RIGHTS) and closes its own copy: the
       supervisor's egress proxy accepts on it the connections made inside
       the namespace, the only endpoint there (docs/egress.md). */
    int egress_socket_fd;
    uint16_t egress_port;

    /* Working directory (the call's scratch directory). */
    const char *_Nullable workdir;

    /* If set (requires CLONE_NEWNS in namespace_flags): the call's scratch
       directory. The child makes every mount a slave (nothing it mounts
       reaches the supervisor's namespace), mounts a fresh tmpfs there with
       scratch_mount_options ("size=...,nr_inodes=...,mode=0700,uid=,gid="),
       and adds a Landlock rule granting scratch_access beneath its root to
       the ruleset (a rule on the directory underneath would not apply: a
       mount hides it). The tmpfs disappears with the worker's namespace. */
    const char *_Nullable scratch_dir;
    const char *_Nullable scratch_mount_options;
    uint64_t scratch_access;

    /* Extra clone flags (CLONE_NEWPID, CLONE_NEWUSER, ...). */
    int namespace_flags;
    /* With CLONE_NEWUSER: the contents written to /proc/self/uid_map and
       gid_map (e.g. "1000 1000 1\n"), prepared by the parent. */
    const char *_Nullable uid_map;
    const char *_Nullable gid_map;

    const mcps_rlimit *_Nullable rlimits;
    int rlimit_count;

    /* Drop capabilities 0...last_cap from the bounding set (needs CAP_SETPCAP). */
    int drop_bounding_set;
    int last_cap;

    /* Switch to this uid/gid with no supplementary groups (when run as root). */
    int change_ids;
    uid_t uid;
    gid_t gid;

    /* Landlock ruleset to enforce; -1 means none (the caller must have refused
       a cell that needs one). */
    int landlock_ruleset_fd;

    /* Precompiled classic BPF program (struct sock_filter[]) and its length. */
    const void *_Nullable seccomp_filter;
    unsigned short seccomp_filter_len;
    /* If >= 0, the filter is installed with SECCOMP_FILTER_FLAG_NEW_LISTENER
       and the listener fd is sent over this unix socket (SCM_RIGHTS), then
       closed, so the worker never holds its own listener. */
    int notify_socket_fd;
    /* The syscall profiler's program (NULL: none). When set (only with
       notify_socket_fd >= 0), it is installed first with the listener and
       seccomp_filter after it without one; seccomp_filter must then kill
       what it refuses (docs/resilience.md, "Syscall profiler"). */
    const void *_Nullable seccomp_profiler_filter;
    unsigned short seccomp_profiler_filter_len;

    /* The supervisor's pid, to detect that it died before PDEATHSIG was set. */
    pid_t parent_pid;
} mcps_spawn_config;

typedef struct {
    pid_t pid;
    int pidfd;
    int stage;   /* mcps_stage of the failure, MCPS_STAGE_NONE on success */
    int error;   /* errno of the failure */
} mcps_spawn_result;

/*
 * Starts a worker: clone(CLONE_VM|CLONE_VFORK|CLONE_PIDFD) on a private
 * stack with all signals blocked, runs the stages above in the child, and
 * execs. Returns 0 with pid and pidfd set once the child has exec'd, or -1
 * with stage and error set (the failed child has been reaped).
 * Called by: SupervisorPlatform's WorkerProcess.spawn, on a long-lived
 * thread (a CallPool thread, or the Prespawner's): PDEATHSIG is tied to the
 * thread that spawned the worker, so that thread must outlive it.
 */
int mcps_spawn(const mcps_spawn_config *config, mcps_spawn_result *result);

/* A short name for a stage ("rlimits", "seccomp", ...). */
const char *mcps_stage_name(int stage);

/* ---- sys.c: parent-side wrappers ---------------------------------------- */

/* pidfd_send_signal(2). */
int mcps_pidfd_send_signal(int pidfd, int sig);

/* waitid(P_PIDFD, pidfd, WEXITED | options) with resource usage (the raw
   syscall's fifth argument, which glibc does not expose). Retries EINTR.
   Fills code (CLD_EXITED, CLD_KILLED, CLD_DUMPED), status, and usage. */
int mcps_pidfd_wait(int pidfd, int options, int *code, int *status, struct rusage *usage);

/* landlock_create_ruleset(2) version query: the ABI, or -1 with errno. */
int mcps_landlock_abi(void);

/* Creates a ruleset handling the given rights. scoped is the ABI 6 scope
   mask (0 when unavailable). */
int mcps_landlock_create_ruleset(uint64_t handled_fs, uint64_t handled_net, uint64_t scoped);

/* Adds a path-beneath rule for an fd opened with O_PATH. */
int mcps_landlock_add_path_rule(int ruleset_fd, int parent_fd, uint64_t allowed);

/* Adds a TCP port rule (ABI 4). */
int mcps_landlock_add_net_rule(int ruleset_fd, uint64_t port, uint64_t allowed);

/* seccomp notifications: the size of struct seccomp_notif. */
int mcps_seccomp_notif_sizes(uint16_t *notif, uint16_t *resp, uint16_t *data);

/* Receives one notification (SECCOMP_IOCTL_NOTIF_RECV). buffer must hold
   the kernel's struct seccomp_notif size. Returns syscall nr, arch, pid. */
int mcps_seccomp_notif_recv(int listener_fd, void *buffer, uint16_t size,
                            uint64_t *id, uint32_t *pid, int32_t *nr, uint32_t *arch,
                            uint64_t *args);

/* Answers a notification with an error (learn mode: a never-allowed call is
 * recorded and fails with this errno instead of running). Parent only. */
int mcps_seccomp_notif_deny(int listener_fd, uint64_t id, int error);

/* Lets the notified syscall run as if no filter had stopped it
   (SECCOMP_USER_NOTIF_FLAG_CONTINUE). Only learn mode uses it: it records a
   cell's syscalls during development and is documented as no sandbox
   against the syscalls it lets through. */
int mcps_seccomp_notif_continue(int listener_fd, uint64_t id);

/* Asks the kernel to wake the notifying task and the supervisor on the
   current CPU (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6): a round trip
   per syscall then costs a context switch, not a cross-CPU wake-up. For
   the syscall profiler, which answers every call. 0, or -1 with errno
   (EINVAL before 6.6: the listener works as before). */
int mcps_seccomp_notif_sync_wakeup(int listener_fd);

/* Receives one fd sent with SCM_RIGHTS on a unix socket; -1 with errno. */
int mcps_recv_fd(int socket_fd);


/* ---- connection broker (supervisor side) ---- */

/* One resolved address: family AF_INET (4 bytes used) or AF_INET6. */
typedef struct {
    int family;
    uint8_t bytes[16];
} mcps_address;

/* getaddrinfo(host, SOCK_STREAM): up to max addresses into out. Returns the
   count, or a negative EAI_* code (mcps_resolve_error names it). */
int mcps_resolve(const char *host, mcps_address *out, int max);
const char *mcps_resolve_error(int code);

/* Text form of an address ("192.0.2.1", "2001:db8::1"), into buf. */
int mcps_address_text(const mcps_address *address, char *buf, size_t size);

/* Parses an IP literal. Returns 1 and fills out if host is one, else 0. */
int mcps_parse_address(const char *host, mcps_address *out);

/* A TCP connection to address:port, close-on-exec and blocking, within
   timeout_ms; -1 with errno (ETIMEDOUT when the time ran out, ECANCELED when
   cancel_fd, if >= 0, became readable first: the call was cancelled). */
int mcps_tcp_connect(const mcps_address *address, int port, int timeout_ms, int cancel_fd);

/* Sends one datagram, with fd attached by SCM_RIGHTS if fd >= 0. */
int mcps_send_message(int socket_fd, const void *data, size_t length, int fd);

/* openat2(2) with the given resolve flags (RESOLVE_BENEATH etc). */
int mcps_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);

/* Last valid capability number (from /proc/sys/kernel/cap_last_cap). */
int mcps_cap_last_cap(void);

/* 1 if the calling thread has the capability in its effective set. */
int mcps_has_effective_cap(int cap);

/* prctl(PR_SET_DUMPABLE, 0) for the supervisor itself. */
int mcps_set_non_dumpable(void);

/* Probes unprivileged namespace creation in a throwaway child: returns 0 if
   clone(flags) works, else -1 with errno. */
int mcps_probe_clone(int flags);

/* pipe2(O_CLOEXEC). */
int mcps_pipe_cloexec(int fds[_Nonnull 2]);

/* memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING). */
int mcps_memfd_sealable(const char *name);

/* Seals a memfd against any further change (seal, shrink, grow, write). */
int mcps_memfd_seal(int fd);

/* open(path, O_PATH | O_CLOEXEC). */
int mcps_open_path(const char *path);

/* ---- seccomp.c: filter compilation with libseccomp (parent only) -------- */

/* One rule of an allowlist. */
typedef struct {
    int nr;             /* native syscall number */
    int errno_action;   /* -1: allow; otherwise fail the call with this errno */
    int arg_index;      /* -1: no argument condition; else 0-5 */
    uint64_t arg_mask;  /* condition: (arg & arg_mask) == arg_value */
    uint64_t arg_value;
    int arg2_index;     /* -1: no second condition (both must hold); else 0-5 */
    uint64_t arg2_mask;
    uint64_t arg2_value;
} mcps_seccomp_rule;

/* Compiles rules into a classic BPF program. The rules apply to the native
   architecture; the other architectures this CPU can enter (i386 via
   int 0x80, x32) are in the program with no rule, so every one of their
   syscalls takes the default action too (with notification the supervisor
   names the architecture; nothing is allowed there). Only an architecture
   the kernel cannot run here at all takes the bad-architecture kill.
   default_action: 0 kill process, 1 user notification (the supervisor names
   and kills), 2 log (learn mode). On success *program is malloc'd
   (caller frees) and *length is the number of sock_filter instructions.
   Returns 0, or a negative errno from libseccomp. */
int mcps_seccomp_compile(const mcps_seccomp_rule *_Nullable rules, int count, int default_action,
                         void *_Nullable *_Nonnull program, size_t *length);

/* The native syscall number for a name, or a negative value if unknown. */
int mcps_seccomp_syscall_number(const char *name);

/* The name of syscall nr on the audit architecture arch, into buf. */
int mcps_seccomp_syscall_name(int nr, uint32_t arch, char *buf, size_t size);

/* The native audit architecture (AUDIT_ARCH_X86_64 on x86_64). */
uint32_t mcps_seccomp_native_arch(void);

/* libseccomp's API level (1-6): which kernel features it detected. */
int mcps_seccomp_api_level(void);

#pragma clang assume_nonnull end

#endif
