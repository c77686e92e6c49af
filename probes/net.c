/* Network probes: connect, bind, listen, accept/accept4 (inet, inet6, unix), and DNS queries
 * (sendto/sendmsg/sendmmsg to port 53, or on a socket connected to port 53).
 * Wire struct: net_event. Decoder: monitor/sensor/net.py. */

struct net_event {
    struct hdr h;
    s32 fd;
    u32 addrlen;
    u32 backlog;
    u32 payload_len;
    u32 socktype;               /* SOCK_STREAM / SOCK_DGRAM, from the socket() that made fd */
    u32 repeats;                /* connects/accepts of the same (process, peer) folded into this one */
    u8 addr[SOCKADDR_LEN];      /* the sockaddr as the process passed or received it */
    u8 payload[DNS_LEN];        /* dns only: the record is cut before it otherwise */
};

/* sockets connected to port 53: (tgid << 32 | fd) */
BPF_TABLE("lru_hash", u64, u8, dns_fds, 8192);
/* socket type by (tgid << 32 | fd), learnt at socket() exit */
BPF_TABLE("lru_hash", u64, u32, sock_types, 65536);
/* set by the cgroup connect programs when they refuse a connect (per thread) */
BPF_HASH(net_denied, u32, u8, 4096);

static __always_inline u16 sockaddr_port(const u8 *addr) {
    u16 family = *(u16 *)addr;
    if (family != AF_INET_VALUE && family != AF_INET6_VALUE)
        return 0;
    return ((u16)addr[2] << 8) | addr[3];
}

/* Connects to one address (and accepts from one peer address, any port) by one process, with
 * one outcome, fold like repeated opens: a client polling a service, a server taking a burst. A
 * denied connect is never folded. The port of an accepted peer is ephemeral: not in the key; the
 * listening socket is. */
static __always_inline int fold_net(struct net_event *e) {
    if (e->h.kind != K_CONNECT && e->h.kind != K_ACCEPT)
        return 0;
    if (e->h.flags & F_DENIED)
        return 0;
    u8 saved_port[2] = {e->addr[2], e->addr[3]};
    if (e->h.kind == K_ACCEPT && sockaddr_port(e->addr)) {   /* inet/inet6 only: a unix path has no port */
        e->addr[2] = 0;
        e->addr[3] = 0;
    }
    u64 h = FNV_OFFSET;
    for (int i = 0; i < SOCKADDR_LEN; i++) {
        if (i >= e->addrlen)
            break;
        h = (h ^ e->addr[i]) * FNV_PRIME;
    }
    e->addr[2] = saved_port[0];
    e->addr[3] = saved_port[1];
    struct agg_key key = {.pid = e->h.pid, .kind = e->h.kind,
                          .flags = e->h.kind == K_ACCEPT ? (u32)e->fd : 0,
                          .ok = e->h.result >= 0 || e->h.result == -EINPROGRESS_VALUE, .hash = h};
    return fold_repeat(&key, e->h.ts, &e->repeats);
}

/* Built in a per-CPU scratch (a folded record costs no ring space), sent without the DNS payload. */
BPF_PERCPU_ARRAY(net_scratch, struct net_event, 1);

static __always_inline int net_exit(long ret) {
    struct stash_t s;
    if (!take_args(&s))
        return 0;
    u32 zero = 0;
    struct net_event *e = net_scratch.lookup(&zero);
    if (!e)
        return 0;
    u64 cg = bpf_get_current_cgroup_id();
    fill_hdr(&e->h, s.kind, cg, offsetof(struct net_event, payload));
    e->h.result = ret;
    e->fd = (s32)s.a[0];
    e->backlog = (u32)s.a[3];
    e->payload_len = 0;
    e->repeats = 0;
    u64 fdkey = ((u64)e->h.pid << 32) | (u32)e->fd;
    u32 *type = sock_types.lookup(&fdkey);
    e->socktype = type ? *type : 0;
    if (s.kind == K_ACCEPT && ret >= 0 && type) {
        u64 newkey = ((u64)e->h.pid << 32) | (u32)ret;
        u32 t = *type;
        sock_types.update(&newkey, &t);
    }
    u32 addrlen = (u32)s.a[2];
    if (s.kind == K_ACCEPT) {   /* a[2] points at the length the kernel wrote back */
        addrlen = 0;
        if (s.a[2])
            read_user(&addrlen, sizeof(addrlen), (void *)s.a[2]);
    }
    if (addrlen > SOCKADDR_LEN - 1)   /* sockaddr_un is 110 bytes: 127 is enough */
        addrlen = SOCKADDR_LEN - 1;
    e->addrlen = addrlen;
    __builtin_memset(e->addr, 0, SOCKADDR_LEN);
    /* Constant-size reads keep the verifier simple; the decoder uses addrlen. A read that
     * would cross the end of the user mapping is retried at sockaddr_in6's size. */
    if (s.a[1] && read_user(e->addr, SOCKADDR_LEN, (void *)s.a[1]) != 0)
        read_user(e->addr, 28, (void *)s.a[1]);
    if (s.kind == K_CONNECT) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        u8 *denied = net_denied.lookup(&tid);
        if (denied) {
            e->h.flags |= F_DENIED;
            net_denied.delete(&tid);
        }
        if (sockaddr_port(e->addr) == 53 && (ret == 0 || ret == -EINPROGRESS_VALUE)) {
            u64 key = ((u64)e->h.pid << 32) | (u32)e->fd;
            u8 one = 1;
            dns_fds.update(&key, &one);
        }
    }
    if (fold_net(e))
        return 0;
    if (output_record(e, offsetof(struct net_event, payload), wake_flags(s.kind)) != 0)
        count_lost(s.kind);
    return 0;
}

#define NET_PROBE(name, kind, fd, addr, len, backlog)                                   \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                      \
        return stash_args(kind, (u64)(fd), (u64)(addr), (u64)(len), (u64)(backlog), 0); \
    }                                                                                   \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) { return net_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_socket) {
    return stash_args(K_SOCKET, args->family, args->type, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_socket) {
    struct stash_t s;
    if (!take_args(&s))
        return 0;
    u32 type = (u32)s.a[1] & 0xf;
    if (args->ret >= 0) {
        u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (u32)args->ret;
        sock_types.update(&key, &type);
    }
    return 0;
}

NET_PROBE(connect, K_CONNECT, args->fd, args->uservaddr, args->addrlen, 0)
NET_PROBE(bind, K_BIND, args->fd, args->umyaddr, args->addrlen, 0)
NET_PROBE(listen, K_LISTEN, args->fd, 0, 0, args->backlog)
NET_PROBE(accept, K_ACCEPT, args->fd, args->upeer_sockaddr, args->upeer_addrlen, 0)
NET_PROBE(accept4, K_ACCEPT, args->fd, args->upeer_sockaddr, args->upeer_addrlen, 0)

/* DNS: copy the query payload when the destination (or the connected peer) is port 53. */
static __always_inline int dns_send(int fd, const void *buf, u64 len, const void *addr, u32 addrlen) {
    u64 cg;
    if (!watched_cgroup(&cg) || !buf)
        return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u8 sa[SOCKADDR_LEN] = {};
    int is_dns = 0;
    if (addr && addrlen >= 4) {
        read_user(sa, 28, addr);
        is_dns = sockaddr_port(sa) == 53;
    } else {
        u64 key = ((u64)pid << 32) | (u32)fd;
        is_dns = dns_fds.lookup(&key) != NULL;
    }
    if (!is_dns)
        return 0;
    struct net_event *e = reserve_record(sizeof(struct net_event));
    if (!e) {
        count_lost(K_DNS);
        return 0;
    }
    fill_hdr(&e->h, K_DNS, cg, sizeof(struct net_event));
    e->fd = fd;
    u64 fdkey = ((u64)pid << 32) | (u32)fd;
    u32 *type = sock_types.lookup(&fdkey);
    e->socktype = type ? *type : 0;
    e->repeats = 0;
    e->addrlen = addr ? 28 : 0;
    e->backlog = 0;
    __builtin_memcpy(e->addr, sa, SOCKADDR_LEN);
    u32 n = len > DNS_LEN - 1 ? DNS_LEN - 1 : len;
    e->payload_len = n;
    if (read_user(e->payload, DNS_LEN, buf) != 0 &&
        read_user(e->payload, 64, buf) != 0)
        read_user(e->payload, 32, buf);
    submit_now(e, K_DNS);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    return dns_send(args->fd, args->buff, args->len, args->addr, args->addr_len);
}

/* struct user_msghdr / mmsghdr are user ABI: name at 0, namelen at 8, iov at 16. */
static __always_inline int dns_sendmsg(int fd, const void *msg) {
    u64 hdr[3] = {};
    read_user(hdr, sizeof(hdr), msg);
    u64 iov[2] = {};
    if (hdr[2])
        read_user(iov, sizeof(iov), (void *)hdr[2]);
    return dns_send(fd, (void *)iov[0], iov[1], (void *)hdr[0], (u32)hdr[1]);
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return dns_sendmsg(args->fd, args->msg); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return dns_sendmsg(args->fd, args->mmsg); }
