/*
 * seccomp.c — compiling manifest allowlists with libseccomp, in the
 * supervisor process only (libseccomp allocates: it must never run between
 * clone and exec). Each cell version's filter is compiled once and the
 * resulting BPF is handed to every worker of that version.
 */
#include "supervisor_shim.h"

#include <errno.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/filter.h>

int mcps_seccomp_compile(const mcps_seccomp_rule *rules, int count, int default_action, void **program,
                         size_t *length) {
    *program = NULL;
    *length = 0;
    uint32_t def = default_action == 1 ? SCMP_ACT_NOTIFY : default_action == 2 ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS;
    scmp_filter_ctx ctx = seccomp_init(def);
    if (!ctx) return -ENOMEM;
    scmp_filter_ctx foreign = NULL;
    int rc;
    /* An architecture this CPU cannot enter is killed outright. */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) != 0) goto out;
    /* Binary search over syscall numbers: halves the kernel's attach cost. */
    if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)) != 0) goto out;
    for (int i = 0; i < count; i++) {
        const mcps_seccomp_rule *r = &rules[i];
        uint32_t action = r->errno_action >= 0 ? SCMP_ACT_ERRNO((uint32_t)r->errno_action) : SCMP_ACT_ALLOW;
        struct scmp_arg_cmp cmp[2];
        unsigned int n = 0;
        if (r->arg_index >= 0)
            cmp[n++] = (struct scmp_arg_cmp){
                .arg = (unsigned int)r->arg_index, .op = SCMP_CMP_MASKED_EQ, .datum_a = r->arg_mask, .datum_b = r->arg_value};
        if (r->arg2_index >= 0)
            cmp[n++] = (struct scmp_arg_cmp){
                .arg = (unsigned int)r->arg2_index, .op = SCMP_CMP_MASKED_EQ, .datum_a = r->arg2_mask, .datum_b = r->arg2_value};
        rc = seccomp_rule_add_exact_array(ctx, action, r->nr, n, n ? cmp : NULL);
        if (rc != 0) goto out;
    }
    /* i386 (int 0x80) and x32 (nr | 0x40000000) syscalls: an empty filter
       of the same default action, merged in, so they reach the listener and
       are named instead of dying by the bad-architecture kill with no
       record (libseccomp cannot add the rules above to three tables at
       once: the native one is built alone, then merged). */
#if defined(__x86_64__)
    foreign = seccomp_init(def);
    if (!foreign) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = seccomp_attr_set(foreign, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS)) != 0) goto out;
    if ((rc = seccomp_attr_set(foreign, SCMP_FLTATR_CTL_OPTIMIZE, 2)) != 0) goto out;
    if ((rc = seccomp_arch_remove(foreign, SCMP_ARCH_NATIVE)) != 0) goto out;
    if ((rc = seccomp_arch_add(foreign, SCMP_ARCH_X86)) != 0) goto out;
    if ((rc = seccomp_arch_add(foreign, SCMP_ARCH_X32)) != 0) goto out;
    /* seccomp_merge releases foreign on success. */
    if ((rc = seccomp_merge(ctx, foreign)) != 0) goto out;
    foreign = NULL;
#endif
    int fd = memfd_create("mcps-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if ((rc = seccomp_export_bpf(ctx, fd)) != 0) {
        close(fd);
        goto out;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size <= 0 || size % sizeof(struct sock_filter) != 0) {
        close(fd);
        rc = -EINVAL;
        goto out;
    }
    void *buf = malloc((size_t)size);
    if (!buf) {
        close(fd);
        rc = -ENOMEM;
        goto out;
    }
    if (pread(fd, buf, (size_t)size, 0) != size) {
        rc = -EIO;
        free(buf);
        close(fd);
        goto out;
    }
    close(fd);
    *program = buf;
    *length = (size_t)size / sizeof(struct sock_filter);
    rc = 0;
out:
    if (foreign) seccomp_release(foreign);
    seccomp_release(ctx);
    return rc;
}

int mcps_seccomp_syscall_number(const char *name) {
    return seccomp_syscall_resolve_name(name);
}

int mcps_seccomp_syscall_name(int nr, uint32_t arch, char *buf, size_t size) {
    char *n = seccomp_syscall_resolve_num_arch(arch, nr);
    if (!n) return -1;
    strncpy(buf, n, size - 1);
    buf[size - 1] = 0;
    free(n);
    return 0;
}

uint32_t mcps_seccomp_native_arch(void) {
    return seccomp_arch_native();
}

int mcps_seccomp_api_level(void) {
    return (int)seccomp_api_get();
}
