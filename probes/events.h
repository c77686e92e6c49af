/* Shared by every probe: the record header, the watched-cgroup map, the ring buffer,
 * per-kind lost counters, and the per-thread stash that carries syscall arguments from
 * sys_enter to sys_exit (so records carry the result).
 * Constants (K_*, PATH_LEN, ...) are prepended by monitor/sensor/wire.py: one source of truth.
 * Probes read tracepoint arguments, helpers and user memory; kernel structs only in identity.h,
 * through offsets from the running kernel's BTF (never from the headers bcc compiles against). */
#include <uapi/linux/ptrace.h>
#include <linux/capability.h>

/* bcc re-reads /proc/kallsyms at every bpf_probe_read_user*() call it rewrites, seconds of compile
 * over all call sites. Calling the same helpers through their ids compiles to the same instruction
 * without the lookup. */
static long (*read_user)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;
static long (*read_user_str)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user_str;

struct hdr {
    u64 ts;          /* bpf_ktime_get_ns() */
    u64 cgroup_id;
    u32 kind;
    u32 pid;         /* tgid */
    u32 tid;
    u32 uid;
    u32 gid;
    s32 result;      /* syscall return value (0 / -errno / fd), where known */
    u32 flags;       /* F_* bits: truncation, verdict */
    u32 size;        /* bytes of this record actually used */
    char comm[16];
};

struct stash_t {
    u32 kind;
    u32 tid;         /* owner of the slot; 0 when free */
    u64 a[5];
};

BPF_HASH(watched, u64, u8, 4096);
/* One stash slot per thread id (tid mod STASH_SLOTS): an array lookup takes no lock and
 * allocates nothing, where a hash update + lookup + delete per syscall costs far more. Two
 * watched threads whose ids collide in the same syscall window are counted (K_STASH lost). */
BPF_ARRAY(stash, struct stash_t, STASH_SLOTS);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* A small second ring for the rare record the kernel refuses on `events` although `events` is far
 * from full (seen on 6.18 once the ring has wrapped: 1-7 records per 200k at 30k-100k records/s,
 * with the reader 150 KB behind in a 16 MiB ring). User space reads both; a record is lost (and
 * counted) only when both refuse it. */
BPF_RINGBUF_OUTPUT(rescue, RESCUE_PAGES);

/* bpf_ringbuf_output on `events`, else on `rescue`; non-zero when both refused the record */
static __always_inline long output_record(void *record, u32 size, u64 flags) {
    if (events.ringbuf_output(record, size, flags) == 0)
        return 0;
    return rescue.ringbuf_output(record, size, flags);
}

/* bpf_ringbuf_reserve on `events`, else on `rescue` (submit works on either; size is a constant
 * at every call site, as the verifier wants, once this is inlined) */
static __always_inline void *reserve_record(u32 size) {
    void *reserved = events.ringbuf_reserve(size);
    if (!reserved)
        reserved = rescue.ringbuf_reserve(size);
    return reserved;
}
BPF_PERCPU_ARRAY(lost, u64, K_MAX);

/* Plain file, fork and exit records batch up: user space reads the ring every POLL_MS (5 ms)
 * without a wakeup, and one is forced every WAKEUP_RECORDS batched records per CPU (a wakeup per
 * open costs more than the open itself). Other records (exec result, connect, privilege...) use
 * the ring's own policy, which wakes a reader only if it has read everything before them: after a
 * batched record (an exec always follows one) they wait for the next poll too, unless
 * eager_wakeup (below) is on. */
BPF_PERCPU_ARRAY(unwoken, u32, 1);
static __always_inline u64 batched_wakeup(void) {
    u32 zero = 0;
    u32 *pending = unwoken.lookup(&zero);
    if (pending && ++(*pending) >= WAKEUP_RECORDS) {
        *pending = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}
static __always_inline void submit_batched(void *record) {
    bpf_ringbuf_submit(record, batched_wakeup());
}
/* By record kind, set by user space (Sensor.set_eager_wakeup) for the kinds a loaded rule kills or
 * freezes on from user space: their records force the wakeup, and the action lands right after the
 * syscall instead of at the next poll. Off otherwise: a wakeup and a small batch per exec multiply
 * the exec storm's overhead (docs/performance.md). */
BPF_ARRAY(eager_wakeup, u32, K_MAX);
static __always_inline u64 wake_flags(u32 kind) {
    u32 *eager = eager_wakeup.lookup(&kind);
    return eager && *eager ? BPF_RB_FORCE_WAKEUP : 0;
}
static __always_inline void submit_now(void *record, u32 kind) {
    bpf_ringbuf_submit(record, wake_flags(kind));
}

/* Repetitive records (the same process opening the same path, or connecting to the same
 * address, with the same outcome) within AGG_WINDOW_NS are counted here, not sent: the next record
 * sent for that key carries the count (`repeats`), and every folded record is also counted per
 * kind in `folded`, which the summary reports. Counted, never silently lost. */
struct agg_key {
    u32 pid;
    u32 kind;
    u32 flags;      /* open flags; 0 for network records */
    s32 ok;         /* the call succeeded (or is in progress) */
    u64 hash;       /* FNV-1a of the path or sockaddr */
};
struct agg_val {
    u64 first_ns;
    u32 suppressed;
    u32 pad;
};
BPF_TABLE("lru_hash", struct agg_key, struct agg_val, agg, 16384);
BPF_PERCPU_ARRAY(folded, u64, K_MAX);

#define FNV_OFFSET 14695981039346656037ULL
#define FNV_PRIME 1099511628211ULL

/* 1 when this record folds into an earlier one (the caller drops it); else *repeats is the
 * count folded since the key's last record. */
static __always_inline int fold_repeat(struct agg_key *key, u64 now, u32 *repeats) {
    struct agg_val *val = agg.lookup(key);
    if (val && now - val->first_ns < AGG_WINDOW_NS) {
        __sync_fetch_and_add(&val->suppressed, 1);
        u32 kind = key->kind;
        u64 *n = folded.lookup(&kind);
        if (n)
            (*n)++;
        return 1;
    }
    *repeats = val ? val->suppressed : 0;
    struct agg_val fresh = {.first_ns = now};
    agg.update(key, &fresh);
    return 0;
}

/* The first thing every probe does: is the current task in a watched sandbox? */
static __always_inline int watched_cgroup(u64 *cg) {
    *cg = bpf_get_current_cgroup_id();
    return watched.lookup(cg) != NULL;
}

static __always_inline void count_lost(u32 kind) {
    u64 *n = lost.lookup(&kind);
    if (n)
        (*n)++;
}

static __always_inline void fill_hdr(struct hdr *h, u32 kind, u64 cg, u32 size) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    h->ts = bpf_ktime_get_ns();
    h->cgroup_id = cg;
    h->kind = kind;
    h->pid = pid_tgid >> 32;
    h->tid = (u32)pid_tgid;
    h->uid = (u32)uid_gid;
    h->gid = uid_gid >> 32;
    h->result = 0;
    h->flags = 0;
    h->size = size;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* sys_enter half: remember the arguments of a watched thread's syscall. */
static __always_inline int stash_args(u32 kind, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4) {
    u64 cg;
    if (!watched_cgroup(&cg))
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 slot = tid & (STASH_SLOTS - 1);
    struct stash_t *sp = stash.lookup(&slot);
    if (!sp)
        return 0;
    if (sp->tid && sp->tid != tid)
        count_lost(K_STASH);   /* another watched thread's syscall is still in this slot */
    sp->kind = kind;
    sp->a[0] = a0;
    sp->a[1] = a1;
    sp->a[2] = a2;
    sp->a[3] = a3;
    sp->a[4] = a4;
    sp->tid = tid;
    return 0;
}

/* sys_exit half: take the arguments back into *out; 0 when the enter half did not stash
 * (the thread is not watched). */
static __always_inline int take_args(struct stash_t *out) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u32 slot = tid & (STASH_SLOTS - 1);
    struct stash_t *sp = stash.lookup(&slot);
    if (!sp || sp->tid != tid)
        return 0;
    *out = *sp;
    sp->tid = 0;
    return 1;
}
