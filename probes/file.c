/* File probes: open/openat/openat2, unlink/unlinkat, rename/renameat/renameat2,
 * chmod/fchmodat/fchmodat2/fchmod. Arguments are stashed at enter; the record is written at
 * exit with the result (paths are still in user memory then). A successful open also carries
 * the identity of the file the returned fd points to (probes/identity.h): its canonical path,
 * device and inode, read in the kernel before the syscall returns, so a process that opens and
 * exits at once cannot race it.
 * Wire struct: file_event. Decoder: monitor/sensor/file.py. */

struct file_event {
    struct hdr h;
    s32 dfd;
    s32 dfd2;
    u32 oflags;
    u32 mode;
    u32 repeats;            /* opens of the same (process, path, flags) folded into this one */
    u32 path_used;          /* bytes of `path` sent, with its NUL (PATH_LEN: cut, no NUL) */
    struct file_id id;
    char path[PATH_LEN];    /* as the caller passed it; the canonical path follows its used bytes */
    char path2[PATH_LEN];   /* rename only: the record is cut before it otherwise */
    char canon_room[CANON_LEN];
};

static __always_inline u64 path_hash(const char *path) {
    u64 h = FNV_OFFSET;
    for (int i = 0; i < PATH_LEN; i++) {
        char c = path[i];
        if (!c)
            break;
        h = (h ^ (u8)c) * FNV_PRIME;
    }
    return h;
}

/* 1 when this open folds into an earlier record (see fold_repeat) */
static __always_inline int fold_open(struct file_event *e, long ret) {
    struct agg_key key = {.pid = bpf_get_current_pid_tgid() >> 32, .kind = K_OPEN,
                          .flags = e->oflags, .ok = ret >= 0, .hash = path_hash(e->path)};
    return fold_repeat(&key, bpf_ktime_get_ns(), &e->repeats);
}

/* The record's body from the stashed arguments; returns the bytes of path used, with its NUL
 * (PATH_LEN: truncated). The header is the caller's: a folded open never needs one. */
static __always_inline u32 fill_file(struct file_event *e, struct stash_t *s) {
    e->dfd = (s32)s->a[0];
    e->oflags = (u32)s->a[2];
    e->mode = (u32)s->a[3];
    e->dfd2 = (s32)s->a[4];
    e->repeats = 0;
    if (s->kind == K_OPEN2) {   /* openat2: flags and mode live in struct open_how (u64 each) */
        u64 how[2] = {};
        read_user(how, sizeof(how), (void *)s->a[2]);
        e->oflags = (u32)how[0];
        e->mode = (u32)how[1];
    }
    e->path[0] = 0;
    long n = s->a[1] ? read_user_str(e->path, PATH_LEN, (void *)s->a[1]) : 0;
    return n > 0 ? n : 1;
}

static __always_inline void file_hdr(struct file_event *e, u32 kind, u32 size, long ret, u32 used) {
    fill_hdr(&e->h, kind, bpf_get_current_cgroup_id(), size);
    e->h.result = ret;
    if (used >= PATH_LEN)
        e->h.flags |= F_PATH_TRUNC;
}

/* Records are cut after the path's NUL (an open record is ~110 bytes, not 336): built in a
 * per-CPU scratch and copied out, so a folded open costs no ring space at all. */
BPF_PERCPU_ARRAY(file_scratch, struct file_event, 1);

static __always_inline int file_exit(void *ctx, long ret) {
    struct stash_t s;
    if (!take_args(&s))
        return 0;
    u32 zero = 0;
    struct file_event *e = file_scratch.lookup(&zero);
    if (!e)
        return 0;
    u32 used = fill_file(e, &s);
    int open = s.kind == K_OPEN || s.kind == K_OPEN2;
    if (open && fold_open(e, ret))
        return 0;
    if (used > PATH_LEN)
        used = PATH_LEN;
    e->path_used = used;
    __builtin_memset(&e->id, 0, sizeof(e->id));
    u32 size = offsetof(struct file_event, path) + (used & (2 * PATH_LEN - 1));
    file_hdr(e, s.kind, size, ret, used);
    u64 wake = open ? batched_wakeup() : wake_flags(s.kind);   /* unlink, chmod: their own flag */
    if (open && ret >= 0) {
        start_walk(ctx, WALK_OPEN, current_file(ret), used, 0, wake);
        e->id.id_flags = ID_OFF;   /* the walker did not run */
    }
    /* the caller's own running executable, linked at enter and unlinked now */
    if (s.kind == K_UNLINK && ret == 0 && !s.a[3] && exe_unlinked())
        e->id.id_flags = ID_EXE_UNLINKED;
    if (output_record(e, size, wake) != 0)
        count_lost(s.kind);
    return 0;
}

/* rename: the full record, with the new path */
static __always_inline int rename_exit(void *ctx, long ret) {
    struct stash_t s;
    if (!take_args(&s))
        return 0;
    struct file_event *e = reserve_record(offsetof(struct file_event, canon_room));
    if (!e) {
        count_lost(s.kind);
        return 0;
    }
    u32 used = fill_file(e, &s);
    file_hdr(e, s.kind, offsetof(struct file_event, canon_room), ret, used);
    e->path_used = used > PATH_LEN ? PATH_LEN : used;
    __builtin_memset(&e->id, 0, sizeof(e->id));
    e->mode = 0;
    read_user_str(e->path2, PATH_LEN, (void *)s.a[3]);
    submit_now(e, s.kind);
    return 0;
}

#define FILE_PROBE_X(name, kind, dfd, path, flags, mode_or_path2, dfd2, exit_fn)       \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                      \
        return stash_args(kind, (u64)(dfd), (u64)(path), (u64)(flags),                  \
                          (u64)(mode_or_path2), (u64)(dfd2));                           \
    }                                                                                   \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return exit_fn(args, args->ret); }
#define FILE_PROBE(name, kind, dfd, path, flags, mode, dfd2) \
    FILE_PROBE_X(name, kind, dfd, path, flags, mode, dfd2, file_exit)
#define RENAME_PROBE(name, dfd, path, flags, path2, dfd2) \
    FILE_PROBE_X(name, K_RENAME, dfd, path, flags, path2, dfd2, rename_exit)

FILE_PROBE(open, K_OPEN, AT_FDCWD_VALUE, args->filename, args->flags, args->mode, 0)
FILE_PROBE(openat, K_OPEN, args->dfd, args->filename, args->flags, args->mode, 0)
FILE_PROBE(openat2, K_OPEN2, args->dfd, args->filename, args->how, 0, 0)
/* unlink stashes whether the caller's executable was already unlinked (see file_exit) */
FILE_PROBE(unlink, K_UNLINK, AT_FDCWD_VALUE, args->pathname, 0, exe_unlinked(), 0)
FILE_PROBE(unlinkat, K_UNLINK, args->dfd, args->pathname, args->flag, exe_unlinked(), 0)
RENAME_PROBE(rename, AT_FDCWD_VALUE, args->oldname, 0, args->newname, AT_FDCWD_VALUE)
RENAME_PROBE(renameat, args->olddfd, args->oldname, 0, args->newname, args->newdfd)
RENAME_PROBE(renameat2, args->olddfd, args->oldname, args->flags, args->newname, args->newdfd)
FILE_PROBE(chmod, K_CHMOD, AT_FDCWD_VALUE, args->filename, 0, args->mode, 0)
FILE_PROBE(fchmodat, K_CHMOD, args->dfd, args->filename, 0, args->mode, 0)
FILE_PROBE(fchmod, K_CHMOD, args->fd, 0, 0, args->mode, 0)
