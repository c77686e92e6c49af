/* In-kernel network deny: cgroup sock_addr programs (connect4/6, udp sendmsg4/6) attached to
 * each sandbox's cgroup. A destination matching a deny entry for the current cgroup fails with
 * EPERM before a packet leaves; the sys_exit_connect probe marks that record F_DENIED. A refused
 * UDP send is not marked: no connect exit would consume the mark, and it would be left to flag
 * the thread's next (allowed) connect as denied.
 * Maps: LPM tries keyed by (cgroup id, address bits); the value lists denied ports (0 = all).
 * Reads only the UAPI context (struct bpf_sock_addr). Userspace: Sensor.deny_net(). */

struct net_rule {
    u16 ports[NET_DENY_PORTS];   /* 0 entries unused; any_port set means every port */
    u8 any_port;
    u8 pad[7];
};

struct net4_key {
    u32 prefixlen;
    u8 cgroup[8];
    u8 addr[4];
} __attribute__((packed));

struct net6_key {
    u32 prefixlen;
    u8 cgroup[8];
    u8 addr[16];
} __attribute__((packed));

BPF_LPM_TRIE(deny4, struct net4_key, struct net_rule, 4096);
BPF_LPM_TRIE(deny6, struct net6_key, struct net_rule, 4096);

static __always_inline int port_denied(struct net_rule *rule, u16 port) {
    if (rule->any_port)
        return 1;
#pragma unroll
    for (int i = 0; i < NET_DENY_PORTS; i++) {
        if (rule->ports[i] == port)
            return 1;
    }
    return 0;
}

static __always_inline int refuse(int connecting) {
    if (connecting) {
        u32 tid = (u32)bpf_get_current_pid_tgid();
        u8 one = 1;
        net_denied.update(&tid, &one);
    }
    return 0;   /* sock_addr verdict 0: EPERM */
}

static __always_inline int check4(struct bpf_sock_addr *ctx, int connecting) {
    u64 cg = bpf_get_current_cgroup_id();
    struct net4_key key = {.prefixlen = 64 + 32};
    __builtin_memcpy(key.cgroup, &cg, 8);
    u32 ip = ctx->user_ip4;
    __builtin_memcpy(key.addr, &ip, 4);
    struct net_rule *rule = deny4.lookup(&key);
    if (rule && port_denied(rule, bpf_ntohs((u16)ctx->user_port)))
        return refuse(connecting);
    return 1;
}

static __always_inline int check6(struct bpf_sock_addr *ctx, int connecting) {
    u64 cg = bpf_get_current_cgroup_id();
    struct net6_key key = {.prefixlen = 64 + 128};
    __builtin_memcpy(key.cgroup, &cg, 8);
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    __builtin_memcpy(key.addr, &w0, 4);
    __builtin_memcpy(key.addr + 4, &w1, 4);
    __builtin_memcpy(key.addr + 8, &w2, 4);
    __builtin_memcpy(key.addr + 12, &w3, 4);
    struct net_rule *rule = deny6.lookup(&key);
    if (rule && port_denied(rule, bpf_ntohs((u16)ctx->user_port)))
        return refuse(connecting);
    return 1;
}

/* one program per attach point: the kernel binds a program to its expected attach type */
int deny_connect4(struct bpf_sock_addr *ctx) { return check4(ctx, 1); }
int deny_connect6(struct bpf_sock_addr *ctx) { return check6(ctx, 1); }
int deny_sendmsg4(struct bpf_sock_addr *ctx) { return check4(ctx, 0); }
int deny_sendmsg6(struct bpf_sock_addr *ctx) { return check6(ctx, 0); }
