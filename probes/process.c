/* Process probes: exec (with argv and the in-kernel exec deny), fork, exit, and the
 * privilege / namespace / memfd / ptrace / mount / bpf / chdir calls.
 * Wire structs: exec_event, sys_event. Decoder: monitor/sensor/process.py. */

struct exec_event {
    struct hdr h;
    u32 argc;
    u32 pad;
    char filename[PATH_LEN];
    char args[MAX_ARGS][ARG_LEN];
};

struct sys_event {
    struct hdr h;
    u64 a[5];
    char s[3][STR_LEN];
};

/* Exec deny: an LPM trie keyed by (cgroup id, path bytes). An exact path is stored with its
 * NUL (so it matches only itself); a prefix without. */
struct deny_key {
    u32 prefixlen;
    u8 cgroup[8];
    char path[DENY_PATH_LEN];   /* LPM trie data is at most 256 bytes: 8 + 248 */
} __attribute__((packed));
BPF_LPM_TRIE(exec_deny, struct deny_key, u32, 4096);
BPF_PERCPU_ARRAY(deny_scratch, struct deny_key, 1);
/* clone flags of a watched thread's fork in flight (to tell threads from processes) */
BPF_HASH(clone_flags, u32, u64, 4096);
BPF_HASH(exit_codes, u32, s32, 8192);

/* Is `path` (a kernel-memory copy) denied for this sandbox? */
static __always_inline int exec_denied(u64 cg, const char *path) {
    u32 zero = 0;
    struct deny_key *key = deny_scratch.lookup(&zero);
    if (!key)
        return 0;
    __builtin_memset(key->path, 0, sizeof(key->path));
    key->prefixlen = 64 + DENY_PATH_LEN * 8;
    __builtin_memcpy(key->cgroup, &cg, 8);
    bpf_probe_read_kernel_str(key->path, sizeof(key->path), path);
    return exec_deny.lookup(key) != NULL;
}

/* Exec records are cut after their last argument (a shell command's is ~450 bytes, not 2,888):
 * built in a per-CPU scratch and copied out, so the ring holds six times more execs and user
 * space copies less. */
BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);

static __always_inline int exec_enter(u32 kind, const char *filename, const char *const *argv) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 zero = 0;
    struct exec_event *e = exec_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_hdr(&e->h, kind, cg, sizeof(struct exec_event));
    /* Strings a freshly forked child has not touched yet (a literal in a file-backed page) are
     * not in memory and cannot be faulted in here: flagged F_UNREADABLE, never silently empty.
     * sched_process_exec below supplies the kernel's own copy of the path. */
    int n = read_user_str(e->filename, sizeof(e->filename), filename);
    if (n == PATH_LEN)
        e->h.flags |= F_PATH_TRUNC;
    if (n < 0) {
        e->filename[0] = 0;
        e->h.flags |= F_UNREADABLE;
    }
    e->argc = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        const char *argp = NULL;
        if (read_user(&argp, sizeof(argp), &argv[i]) != 0) {
            e->h.flags |= F_UNREADABLE;
            break;
        }
        if (!argp)
            break;
        int len = read_user_str(e->args[i], ARG_LEN, argp);
        if (len == ARG_LEN)
            e->h.flags |= F_ARG_TRUNC;
        if (len < 0) {
            e->args[i][0] = 0;
            e->h.flags |= F_UNREADABLE;
        }
        e->argc = i + 1;
    }
    if (e->argc == MAX_ARGS) {
        const char *more = NULL;
        read_user(&more, sizeof(more), &argv[MAX_ARGS]);
        if (more)
            e->h.flags |= F_ARGS_TRUNC;
    }
    if (exec_denied(cg, e->filename)) {
        bpf_send_signal(9);   /* delivered before the new image runs an instruction */
        e->h.flags |= F_DENIED;
    }
    u32 argc = e->argc;
    if (argc > MAX_ARGS)
        argc = MAX_ARGS;
    u32 size = offsetof(struct exec_event, args) + argc * ARG_LEN;
    e->h.size = size;
    if (output_record(e, size, batched_wakeup()) != 0)
        count_lost(kind);
    return 0;
}

/* The path an exec ran, from the kernel's own copy (a tracepoint argument), once the exec is
 * past the point of no return and before the new image runs. It fills in a path user memory
 * did not give at sys_enter, and the deny is checked again on it (so an unreadable path
 * cannot slip past the deny). It also carries the identity of the file the new image runs from
 * (mm->exe_file: the interpreter of a #! script, the file behind an fd or a memfd, a deleted
 * file), and the deny is checked on that file's canonical path too (a symlink or a bind mount
 * to a denied program is the denied program). Joined in user space by old_pid. */
struct exec_file_event {
    struct hdr h;
    u64 old_pid;
    struct file_id id;
    char filename[STR_LEN];
    char canon[CANON_LEN + NAME_MAX_VALUE + 1];   /* the walk's writes stay inside, as the verifier checks */
};
BPF_PERCPU_ARRAY(exec_file_scratch, struct exec_file_event, 1);

/* Deny on the kernel's path or the canonical one, then send (the walker sends it too). */
static __always_inline void send_exec_file(struct exec_file_event *e, u64 cg, u32 canon, u64 wake) {
    if (exec_denied(cg, e->filename) || (canon && exec_denied(cg, e->canon))) {
        bpf_send_signal(9);
        e->h.flags |= F_DENIED;
    }
    u32 size = offsetof(struct exec_file_event, canon) + (canon & (CANON_LEN - 1));
    e->h.size = size;
    if (output_record(e, size, wake) != 0)
        count_lost(K_EXEC_FILE);
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 zero = 0;
    struct exec_file_event *e = exec_file_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_hdr(&e->h, K_EXEC_FILE, cg, 0);
    e->old_pid = args->old_pid;
    u16 at = args->data_loc_filename & 0xFFFF;
    e->filename[0] = 0;
    bpf_probe_read_kernel_str(e->filename, STR_LEN, (void *)args + at);
    __builtin_memset(&e->id, 0, sizeof(e->id));
    start_walk(args, WALK_EXEC, current_exe_file(), 0, cg, batched_wakeup());
    e->id.id_flags = ID_OFF;   /* the walker did not run */
    send_exec_file(e, cg, 0, batched_wakeup());
    return 0;
}



/* exec result: a small record; user space joins it to the enter record by tid. */
static __always_inline int exec_exit(u32 kind, long ret) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    struct hdr *h = reserve_record(sizeof(struct hdr));
    if (!h) {
        count_lost(kind);
        return 0;
    }
    fill_hdr(h, kind, cg, sizeof(struct hdr));
    h->result = ret;
    submit_now(h, K_EXEC);   /* the exec is judged once this result is in: it wakes for execs */
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) { return exec_enter(K_EXEC, args->filename, args->argv); }
TRACEPOINT_PROBE(syscalls, sys_exit_execve) { return exec_exit(K_EXEC_RESULT, args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_execveat) { return exec_enter(K_EXEC, args->filename, args->argv); }
TRACEPOINT_PROBE(syscalls, sys_exit_execveat) { return exec_exit(K_EXEC_RESULT, args->ret); }

/* fork: sched_process_fork runs in the parent; clone flags stashed at sys_enter tell threads apart. */
static __always_inline int note_clone(u64 flags) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    clone_flags.update(&tid, &flags);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_clone) { return note_clone(args->clone_flags); }
TRACEPOINT_PROBE(syscalls, sys_enter_clone3) {
    u64 flags = 0;
    read_user(&flags, sizeof(flags), args->uargs);  /* clone_args.flags is first */
    return note_clone(flags);
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 *flags = clone_flags.lookup(&tid);
    if (flags) {
        u64 f = *flags;
        clone_flags.delete(&tid);
        if (f & CLONE_THREAD_FLAG)
            return 0;
    }
    struct sys_event *e = reserve_record(offsetof(struct sys_event, s));
    if (!e) {
        count_lost(K_FORK);
        return 0;
    }
    fill_hdr(&e->h, K_FORK, cg, offsetof(struct sys_event, s));
    e->a[0] = args->child_pid;
    e->a[1] = args->parent_pid;
    submit_batched(e);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s32 code = args->error_code;
    exit_codes.update(&tgid, &code);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 cg;
    if (!watched_cgroup(&cg) || !args->group_dead)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct sys_event *e = reserve_record(offsetof(struct sys_event, s));
    if (!e) {
        count_lost(K_EXIT);
        return 0;
    }
    fill_hdr(&e->h, K_EXIT, cg, offsetof(struct sys_event, s));
    s32 *code = exit_codes.lookup(&tgid);
    e->a[0] = code ? 1 : 0;              /* exit code known (exit_group) or not (signal) */
    e->a[1] = code ? *code : 0;
    if (code)
        exit_codes.delete(&tgid);
    submit_batched(e);
    return 0;
}

/* The other process calls: stash at enter, emit with the result at exit. */
static __always_inline int sys_exit(long ret) {
    struct stash_t s;
    if (!take_args(&s))
        return 0;
    u64 cg = bpf_get_current_cgroup_id();
    struct sys_event *e = reserve_record(sizeof(struct sys_event));
    if (!e) {
        count_lost(s.kind);
        return 0;
    }
    fill_hdr(&e->h, s.kind, cg, sizeof(struct sys_event));
    e->h.result = ret;
    e->a[0] = s.a[0];
    e->a[1] = s.a[1];
    e->a[2] = s.a[2];
    e->a[3] = s.a[3];
    e->a[4] = s.a[4];
    e->s[0][0] = 0;
    e->s[1][0] = 0;
    e->s[2][0] = 0;
    switch (s.kind) {
    case K_MEMFD:
    case K_CHDIR:
        read_user_str(e->s[0], STR_LEN, (void *)s.a[0]);
        break;
    case K_MOUNT:
        read_user_str(e->s[0], STR_LEN, (void *)s.a[0]);
        read_user_str(e->s[1], STR_LEN, (void *)s.a[1]);
        read_user_str(e->s[2], STR_LEN, (void *)s.a[2]);
        break;
    case K_CAPSET: {
        u32 caps[3] = {};
        read_user(caps, sizeof(caps), (void *)s.a[1]);
        e->a[2] = caps[0];   /* effective */
        e->a[3] = caps[1];   /* permitted */
        break;
    }
    }
    submit_now(e, s.kind);
    return 0;
}

#define SYS_PROBE(name, kind, a0, a1, a2, a3)                                           \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                      \
        return stash_args(kind, (u64)(a0), (u64)(a1), (u64)(a2), (u64)(a3), 0);          \
    }                                                                                   \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return sys_exit(args->ret); }

SYS_PROBE(setuid, K_SETUID, args->uid, -1, -1, 0)
SYS_PROBE(setreuid, K_SETUID, args->ruid, args->euid, -1, 1)
SYS_PROBE(setresuid, K_SETUID, args->ruid, args->euid, args->suid, 2)
SYS_PROBE(setgid, K_SETGID, args->gid, -1, -1, 0)
SYS_PROBE(setregid, K_SETGID, args->rgid, args->egid, -1, 1)
SYS_PROBE(setresgid, K_SETGID, args->rgid, args->egid, args->sgid, 2)
SYS_PROBE(capset, K_CAPSET, args->header, args->data, 0, 0)
SYS_PROBE(ptrace, K_PTRACE, args->request, args->pid, 0, 0)
SYS_PROBE(memfd_create, K_MEMFD, args->uname, args->flags, 0, 0)
SYS_PROBE(unshare, K_UNSHARE, args->unshare_flags, 0, 0, 0)
SYS_PROBE(setns, K_SETNS, args->fd, args->flags, 0, 0)
SYS_PROBE(mount, K_MOUNT, args->dev_name, args->dir_name, args->type, args->flags)
SYS_PROBE(bpf, K_BPF, args->cmd, args->size, 0, 0)
SYS_PROBE(chdir, K_CHDIR, args->filename, 0, 0, 0)
SYS_PROBE(fchdir, K_FCHDIR, args->fd, 0, 0, 0)
