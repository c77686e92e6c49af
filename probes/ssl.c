/* TLS plaintext at the libssl boundary: uprobes on SSL_write / SSL_write_ex / SSL_read /
 * SSL_read_ex / SSL_free, for threads in a watched cgroup only.
 *
 * A separate BPF object from the sensor's probes (monitor/llm/probe.py loads it): it keeps its
 * own `watched` map, fed by LlmSource.add_cgroup / remove_cgroup.
 * Constants CHUNK, MAX_CHUNKS, RINGBUF_PAGES are prepended by monitor/llm/probe.py.
 *
 * Entry stashes the arguments, return emits: both reads and writes are captured on return so
 * that only bytes the call really moved are recorded (a non-blocking SSL_write that returns
 * WANT_WRITE is retried by the caller with the same buffer; capturing on entry would duplicate
 * it). The buffer is the caller's user memory, still valid on return.
 * A call's bytes are copied in CHUNK-sized records (offset, len); past CHUNK * MAX_CHUNKS the
 * call is truncated and flagged. User memory only: no kernel struct is read. */
#include <uapi/linux/ptrace.h>

/* the helper by its id: bcc re-reads /proc/kallsyms at each bpf_probe_read_user() it rewrites */
static long (*read_user)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;

#define DIR_WRITE 0
#define DIR_READ 1
#define DIR_CLOSE 2

#define F_TRUNC 1

/* lost counters (per CPU) */
#define L_WRITE 0     /* write records the ring buffer had no room for */
#define L_READ 1      /* read records the ring buffer had no room for */
#define L_TRUNC 2     /* calls longer than CHUNK * MAX_CHUNKS (tail not copied) */
#define L_CLOSE 3     /* close records lost */
#define L_COPY 4      /* bpf_probe_read_user failed (buffer paged out) */
#define L_MAX 5

struct tls_hdr {
    u64 ts;          /* bpf_ktime_get_ns() at return */
    u64 cgroup_id;
    u64 ssl;         /* the SSL* : identifies the connection within the process */
    u32 pid;         /* tgid */
    u32 tid;
    u32 uid;
    u32 dir;         /* DIR_* */
    u32 total;       /* bytes the call moved */
    u32 offset;      /* of this chunk within the call */
    u32 len;         /* bytes of data in this record */
    u32 flags;       /* F_* */
    u32 gid;
    u32 pad;
    char comm[16];
};

struct tls_rec {
    struct tls_hdr h;
    char data[CHUNK];
};

struct call_args {
    u64 ssl;
    u64 buf;
    u64 outlen;      /* size_t * of the _ex variants, 0 for SSL_read / SSL_write */
    u32 dir;
    u32 pad;
};

BPF_HASH(watched, u64, u8, 4096);
/* per thread: the call in flight (SSL calls do not nest within a thread) */
BPF_HASH(inflight, u64, struct call_args, 16384);
BPF_RINGBUF_OUTPUT(tls_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(tls_lost, u64, L_MAX);
BPF_PERCPU_ARRAY(scratch, struct tls_rec, 1);

static __always_inline void count(u32 idx) {
    u64 *n = tls_lost.lookup(&idx);
    if (n)
        (*n)++;
}

static __always_inline int in_watched_cgroup(void) {
    u64 cg = bpf_get_current_cgroup_id();
    return watched.lookup(&cg) != NULL;
}

static __always_inline void fill_hdr(struct tls_hdr *h, u32 dir, u64 ssl, u32 total) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    h->ts = bpf_ktime_get_ns();
    h->cgroup_id = bpf_get_current_cgroup_id();
    h->ssl = ssl;
    h->pid = pid_tgid >> 32;
    h->tid = (u32)pid_tgid;
    u64 uid_gid = bpf_get_current_uid_gid();
    h->uid = (u32)uid_gid;
    h->gid = uid_gid >> 32;
    h->dir = dir;
    h->total = total;
    h->offset = 0;
    h->len = 0;
    h->flags = 0;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Copy `total` bytes at `buf` into ring-buffer records of at most CHUNK bytes each. */
static __always_inline void emit(u32 dir, u64 ssl, const char *buf, u64 total) {
    u32 zero = 0;
    struct tls_rec *r = scratch.lookup(&zero);
    if (!r)
        return;
    u32 cap = total;
    fill_hdr(&r->h, dir, ssl, total > 0xffffffffULL ? 0xffffffffU : (u32)total);
    if (total > (u64)CHUNK * MAX_CHUNKS) {
        cap = CHUNK * MAX_CHUNKS;
        r->h.flags |= F_TRUNC;
        count(L_TRUNC);
    }
    u32 lost_idx = dir == DIR_WRITE ? L_WRITE : L_READ;
    for (int i = 0; i < MAX_CHUNKS; i++) {
        u32 off = i * CHUNK;
        if (off >= cap)
            break;
        u32 left = cap - off;
        u64 m = (left > CHUNK ? CHUNK : left) - 1;
        /* the verifier must see the size within [1, CHUNK]: mask where clang cannot undo it */
        asm volatile("%[m] &= %[mask]" : [m] "+r"(m) : [mask] "i"(CHUNK - 1));
        u32 n = m + 1;
        r->h.offset = off;
        r->h.len = n;
        if (read_user(r->data, n, buf + off) != 0) {
            count(L_COPY);
            r->h.flags |= F_TRUNC;
            break;
        }
        if (tls_events.ringbuf_output(r, sizeof(struct tls_hdr) + n, 0) != 0)
            count(lost_idx);
    }
}

static __always_inline struct call_args args_of(struct pt_regs *ctx, u32 dir, int ex) {
    struct call_args a = {};
    a.dir = dir;
    a.ssl = PT_REGS_PARM1(ctx);
    a.buf = PT_REGS_PARM2(ctx);
    a.outlen = ex ? PT_REGS_PARM4(ctx) : 0;
    return a;
}

/* Bytes the call moved: SSL_read/SSL_write return them; the _ex variants return 1 and store
 * them through their size_t * argument. All four return int: the upper half of the return
 * register is undefined (a -1 can read as 4294967295), hence the cast. */
static __always_inline u64 moved_bytes(struct pt_regs *ctx, struct call_args *a, int ex) {
    int ret = (int)PT_REGS_RC(ctx);
    u64 moved = 0;
    if (ex) {
        if (ret != 1 || !a->outlen)
            return 0;
        read_user(&moved, sizeof(moved), (void *)a->outlen);
        return moved;
    }
    return ret > 0 ? (u64)ret : 0;
}

static __always_inline int stash(struct pt_regs *ctx, u32 dir, int ex) {
    if (!in_watched_cgroup())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct call_args a = args_of(ctx, dir, ex);
    inflight.update(&id, &a);
    return 0;
}

static __always_inline int finish(struct pt_regs *ctx, u32 dir, int ex) {
    u64 id = bpf_get_current_pid_tgid();
    struct call_args *p = inflight.lookup(&id);
    if (!p)
        return 0;
    struct call_args a = *p;
    inflight.delete(&id);
    if (a.dir != dir)
        return 0;
    u64 moved = moved_bytes(ctx, &a, ex);
    if (moved)
        emit(dir, a.ssl, (const char *)a.buf, moved);
    return 0;
}

int ssl_write_enter(struct pt_regs *ctx) { return stash(ctx, DIR_WRITE, 0); }
int ssl_write_ex_enter(struct pt_regs *ctx) { return stash(ctx, DIR_WRITE, 1); }
int ssl_read_enter(struct pt_regs *ctx) { return stash(ctx, DIR_READ, 0); }
int ssl_read_ex_enter(struct pt_regs *ctx) { return stash(ctx, DIR_READ, 1); }

int ssl_write_return(struct pt_regs *ctx) { return finish(ctx, DIR_WRITE, 0); }
int ssl_write_ex_return(struct pt_regs *ctx) { return finish(ctx, DIR_WRITE, 1); }
int ssl_read_return(struct pt_regs *ctx) { return finish(ctx, DIR_READ, 0); }
int ssl_read_ex_return(struct pt_regs *ctx) { return finish(ctx, DIR_READ, 1); }

/* The SSL* may be reused for another connection after this: tell user space to forget it. */
int ssl_free_enter(struct pt_regs *ctx) {
    if (!in_watched_cgroup())
        return 0;
    struct tls_hdr h = {};
    fill_hdr(&h, DIR_CLOSE, PT_REGS_PARM1(ctx), 0);
    if (tls_events.ringbuf_output(&h, sizeof(h), 0) != 0)
        count(L_CLOSE);
    return 0;
}
