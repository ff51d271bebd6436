// Benchmark baseline only: first-match linear search over an array of rules.
// This is what the classifier is measured against; it is not an engine.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct rule { __u32 src, smask, dst, dmask, proto, pmask; __u16 slo, shi, dlo, dhi; __u32 verdict; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, struct rule); __uint(max_entries, 131072); } rules SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32); __uint(max_entries, 1); } count SEC(".maps");

struct pkt { __u32 src, dst, proto; __u16 sport, dport; __u32 verdict; };

static long check(__u32 i, struct pkt *p)
{
    struct rule *r = bpf_map_lookup_elem(&rules, &i);
    if (!r)
        return 1;
    if ((p->src & r->smask) == r->src && (p->dst & r->dmask) == r->dst && (p->proto & r->pmask) == r->proto
        && p->sport >= r->slo && p->sport <= r->shi && p->dport >= r->dlo && p->dport <= r->dhi) {
        p->verdict = r->verdict;
        return 1;
    }
    return 0;
}

SEC("xdp")
int linear(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return XDP_DROP;
    struct pkt p = { .src = bpf_ntohl(ip->saddr), .dst = bpf_ntohl(ip->daddr), .proto = ip->protocol, .verdict = 0 };
    __u16 *ports = (void *)ip + ip->ihl * 4;
    if ((void *)(ports + 2) <= end) {
        p.sport = bpf_ntohs(ports[0]);
        p.dport = bpf_ntohs(ports[1]);
    }
    __u32 zero = 0, *n = bpf_map_lookup_elem(&count, &zero);
    if (!n)
        return XDP_ABORTED;
    bpf_loop(*n, check, &p, 0);
    return p.verdict ? XDP_PASS : XDP_DROP;
}

SEC("xdp")
int empty(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
