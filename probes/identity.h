/* Kernel identity of files: the path a struct file stands for (its dentry chain, crossing mounts,
 * up to the task's own root), its device, inode and link count. The only kernel struct reads in
 * the probes, through offsets taken from the running kernel's BTF (monitor/sensor/btf.py passes
 * them as OFF_* defines) and never from the headers bcc compiles against; the sensor checks them
 * at load with btf_selftest below. */

static long (*read_kernel)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_kernel;

static __always_inline void *kptr(const void *base, u32 off) {
    void *value = NULL;
    read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

static __always_inline u32 ku32(const void *base, u32 off) {
    u32 value = 0;
    read_kernel(&value, sizeof(value), (const char *)base + off);
    return value;
}

/* What a probe knows of a file beyond its name. */
struct file_id {
    u64 ino;
    u32 dev;          /* the superblock's s_dev (kernel encoding: major << 20 | minor) */
    u32 nlink;
    u32 mode;         /* i_mode: type and permission bits */
    u32 id_flags;     /* ID_* */
    u32 canon_len;    /* bytes of the canonical path sent after the requested one, with its NUL */
    u32 pad;
};

/* The self-test: the tgid read through OFF_TASK_TGID next to the one the helper returns, for the
 * process the sensor names (it makes a getppid() call), its parent's tgid, its executable's inode,
 * and the canonical path of its executable as the walk makes it (every offset the walk uses). User
 * space refuses the offsets when any disagrees, and the probes then send no identity (ID_OFF:
 * every file is marked unresolved). */
struct selftest_t {
    u32 want_pid;
    u32 helper_tgid;
    u32 read_tgid;
    u32 parent_tgid;
    u64 exe_ino;
    u32 done;
    u32 exe_path_len;
    char exe_path[CANON_LEN + NAME_MAX_VALUE + 1];   /* the walk of its executable's path */
};
BPF_ARRAY(btf_selftest, struct selftest_t, 1);
BPF_ARRAY(identity_on, u32, 1);   /* set by user space once the self-test passed */

static __always_inline int identity_enabled(void) {
    u32 zero = 0;
    u32 *on = identity_on.lookup(&zero);
    return on && *on;
}

/* The walk is in two passes, each easy on the verifier: the first follows the dentry chain (and
 * the mounts) from the file up, keeping each name's pointer and length in a per-CPU table with
 * no arithmetic on offsets; the second writes the names root first into the record. */
struct walk_buf {
    const char *name[PATH_DEPTH];
    u32 len[PATH_DEPTH];   /* 0: a mount crossing, no name */
    u32 n;                 /* table entries used */
    u32 flags;             /* ID_* the first pass ended with */
    u32 off;               /* second pass: bytes written */
};
BPF_PERCPU_ARRAY(walk_scratch, struct walk_buf, 1);

static __always_inline void *current_file(int fd) {
    void *task = (void *)bpf_get_current_task();
    void *fdt = kptr(kptr(task, OFF_TASK_FILES), OFF_FILES_FDT);
    if (!fdt || fd < 0 || (u32)fd >= ku32(fdt, OFF_FDT_MAX_FDS))
        return NULL;
    void **fds = kptr(fdt, OFF_FDT_FD);
    return fds ? kptr(fds, (u32)fd * sizeof(void *)) : NULL;
}

static __always_inline void *current_exe_file(void) {
    void *task = (void *)bpf_get_current_task();
    void *mm = kptr(task, OFF_TASK_MM);
    return mm ? kptr(mm, OFF_MM_EXE_FILE) : NULL;
}

/* Device, inode, link count, mode and whether the dentry is unhashed (deleted). */
static __always_inline void inode_facts(void *file, struct file_id *id) {
    void *dentry = kptr(file, OFF_FILE_DENTRY);
    void *inode = kptr(file, OFF_FILE_INODE);
    read_kernel(&id->ino, sizeof(id->ino), (char *)inode + OFF_INODE_INO);
    id->dev = ku32(kptr(inode, OFF_INODE_SB), OFF_SB_DEV);
    id->nlink = ku32(inode, OFF_INODE_NLINK);
    u16 mode = 0;
    read_kernel(&mode, sizeof(mode), (char *)inode + OFF_INODE_MODE);
    id->mode = mode;
    if (!kptr(dentry, OFF_DENTRY_HASH_PPREV) && kptr(dentry, OFF_DENTRY_PARENT) != dentry)
        id->id_flags |= ID_UNLINKED;
}

/* First pass: the names from `file` up to the task's root. Ends with w->flags ID_RESOLVED, or
 * ID_DETACHED (a pseudo file: memfd, pipe, socket; or a file outside the task's root: the names
 * up to the top of its mount tree), or ID_TRUNC (deeper than PATH_DEPTH). */
static __always_inline void walk_names(void *file, struct walk_buf *w) {
    void *task = (void *)bpf_get_current_task();
    void *fs = kptr(task, OFF_TASK_FS);
    void *root_mnt = kptr(fs, OFF_FS_ROOT_MNT);
    void *root_dentry = kptr(fs, OFF_FS_ROOT_DENTRY);
    void *vfsmnt = kptr(file, OFF_FILE_MNT);
    void *dentry = kptr(file, OFF_FILE_DENTRY);
    char *mount = (char *)vfsmnt - OFF_MOUNT_MNT;   /* container_of(vfsmount, struct mount, mnt) */
    void *mnt_root = kptr(vfsmnt, OFF_VFSMOUNT_ROOT);
    w->n = PATH_DEPTH;
    w->flags = ID_TRUNC;
    for (int i = 0; i < PATH_DEPTH; i++) {
        w->len[i] = 0;
        if (dentry == root_dentry && vfsmnt == root_mnt) {
            w->n = i;
            w->flags = ID_RESOLVED;
            break;
        }
        if (dentry == mnt_root) {
            char *parent_mount = kptr(mount, OFF_MOUNT_PARENT);
            if (parent_mount == mount || !parent_mount) {
                w->n = i;
                w->flags = ID_DETACHED;   /* the top of a mount tree that is not the task's root */
                break;
            }
            dentry = kptr(mount, OFF_MOUNT_MOUNTPOINT);
            mount = parent_mount;
            vfsmnt = parent_mount + OFF_MOUNT_MNT;
            mnt_root = kptr(vfsmnt, OFF_VFSMOUNT_ROOT);
            continue;
        }
        void *parent = kptr(dentry, OFF_DENTRY_PARENT);
        w->name[i] = kptr(dentry, OFF_DENTRY_NAME);
        w->len[i] = ku32(dentry, OFF_DENTRY_NAME_LEN);
        if (parent == dentry || !parent) {
            w->n = i + 1;
            w->flags = ID_DETACHED;   /* a pseudo file (memfd:, pipe:...): its name alone */
            break;
        }
        dentry = parent;
    }
}

/* Second pass: "/" and each name, root first, into dst (room: CANON_LEN + NAME_MAX_VALUE + 1);
 * returns the bytes written with the NUL, or 0 (ID_TRUNC or ID_UNREADABLE set) when the path
 * does not fit. The count and the write offset live in the table, not in registers: every way
 * through an iteration then ends in the same verifier state, and the loop verifies in linear
 * time (kept in registers, their ranges multiplied the states past the verifier's limit). */
static __always_inline u32 write_names(struct walk_buf *w, char *dst, struct file_id *id) {
    w->off = 0;
    for (int j = PATH_DEPTH - 1; j >= 0; j--) {
        u32 len = w->len[j];
        if (j >= *(volatile u32 *)&w->n || !len)
            continue;
        u32 off = *(volatile u32 *)&w->off;
        if (len > NAME_MAX_VALUE || off + len + 2 > CANON_LEN) {
            id->id_flags |= ID_TRUNC;
            return 0;
        }
        dst[off & (CANON_LEN - 1)] = '/';
        if (read_kernel(dst + ((off + 1) & (CANON_LEN - 1)), len & NAME_MAX_VALUE, w->name[j]) != 0) {
            id->id_flags |= ID_UNREADABLE;
            return 0;
        }
        w->off = off + 1 + len;
    }
    u32 off = w->off;
    if (off == 0)
        dst[off++] = '/';   /* the root itself */
    dst[off & (CANON_LEN - 1)] = 0;
    return (off + 1) & (2 * CANON_LEN - 1);
}

/* Fills *id for `file` and writes its canonical path to `dst` (room: CANON_LEN); returns the
 * bytes written with the NUL (0 when no path was made). */
static __always_inline u32 file_identity(void *file, struct file_id *id, char *dst) {
    id->ino = 0;
    id->dev = id->nlink = id->mode = id->id_flags = id->canon_len = id->pad = 0;
    if (!file) {
        id->id_flags = ID_NOFILE;
        return 0;
    }
    u32 zero = 0;
    struct walk_buf *w = walk_scratch.lookup(&zero);
    if (!w)
        return 0;
    inode_facts(file, id);
    walk_names(file, w);
    u32 flags = w->flags;   /* read back: the walk's many ends meet here as one state */
    id->id_flags |= flags;
    if (flags & ID_TRUNC)
        return 0;
    u32 len = write_names(w, dst, id);
    id->canon_len = len;
    return len;
}

/* The walk runs in its own program (probes/walk.c), reached by a tail call from the probe that
 * built the record: inlined into every probe, its loop made the verifier walk each copy, and
 * the probes took seconds longer to load. The probe leaves the record in its per-CPU scratch and
 * what the walker needs here; a failed tail call (the walker not installed) returns to the probe,
 * which sends its record without identity. */
struct walk_ctx_t {
    u32 target;      /* WALK_OPEN: file_scratch; WALK_EXEC: exec_file_scratch */
    u32 used;        /* WALK_OPEN: bytes of the caller's path in the record */
    void *file;
    u64 cg;
    u64 wake;        /* ring wakeup flags for the record */
};
BPF_PERCPU_ARRAY(walk_ctx, struct walk_ctx_t, 1);
BPF_PROG_ARRAY(walkers, 1);
#define WALK_OPEN 1
#define WALK_EXEC 2

static __always_inline void start_walk(void *ctx, u32 target, void *file, u32 used, u64 cg, u64 wake) {
    u32 zero = 0;
    struct walk_ctx_t *w = walk_ctx.lookup(&zero);
    if (!w || !identity_enabled())
        return;
    w->target = target;
    w->used = used;
    w->file = file;
    w->cg = cg;
    w->wake = wake;
    walkers.call(ctx, 0);   /* does not return when the walker runs */
}

/* Is this task's executable unlinked (its dentry unhashed, or no links left)? */
static __always_inline u32 exe_unlinked(void) {
    if (!identity_enabled())
        return 0;
    void *file = current_exe_file();
    if (!file)
        return 0;
    void *dentry = kptr(file, OFF_FILE_DENTRY);
    return !kptr(dentry, OFF_DENTRY_HASH_PPREV) || ku32(kptr(file, OFF_FILE_INODE), OFF_INODE_NLINK) == 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 zero = 0;
    struct selftest_t *t = btf_selftest.lookup(&zero);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!t || t->want_pid != tgid || t->done)
        return 0;
    void *task = (void *)bpf_get_current_task();
    t->helper_tgid = tgid;
    t->read_tgid = ku32(task, OFF_TASK_TGID);
    t->parent_tgid = ku32(kptr(task, OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
    void *exe = kptr(kptr(task, OFF_TASK_MM), OFF_MM_EXE_FILE);
    struct file_id id;
    t->exe_path_len = file_identity(exe, &id, t->exe_path);
    t->exe_ino = id.ino;
    t->done = 1;
    return 0;
}
