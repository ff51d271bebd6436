// golden file written by the tests (pytest --update-golden); do not edit
/* anyplane policy classifier for the v1model architecture.
 *
 * The program's shape depends only on the feature set (port ranges as
 * ternary keys, table sizes); the policy itself is table entries written
 * through P4Runtime. Ingress:
 *   1. endpoint tables (LPM, longest-prefix ownership): source and destination
 *      addresses -> identity ids in metadata (0: no identity owns the address)
 *   2. acl (ternary/range, priorities): ids, addresses, protocol, ports, ICMP,
 *      and whether a TCP segment is "established" (ACK or RST set)
 *      -> acl_allow / acl_deny / acl_rate_limit, a direct counter per entry
 * The switch keeps no connections. Under a stateful policy the controller
 * writes reflexive entries: TCP segments with ACK or RST set, shaped like the
 * replies of an allowed connection, pass (as switch ACLs' "established" does).
 * The switch is a bump in the wire between port pairs (2k <-> 2k+1): the policy
 * decides whether a packet leaves at all. Egress does nothing.
 */
#include <core.p4>
#include <v1model.p4>

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_IPV6 = 0x86dd;
const bit<16> ETHERTYPE_VLAN = 0x8100;
const bit<16> ETHERTYPE_QINQ = 0x88a8;
const bit<8> IPV6_FRAGMENT = 44;
const bit<8> PROTO_ICMP = 1;
const bit<8> PROTO_TCP = 6;
const bit<8> PROTO_UDP = 17;
const bit<8> PROTO_ICMP6 = 58;
const bit<8> TCP_ACK_OR_RST = 0x14;
const bit<2> FAMILY_IPV4 = 1;
const bit<2> FAMILY_IPV6 = 2;

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header vlan_t {
    bit<3> pcp;
    bit<1> dei;
    bit<12> vid;
    bit<16> ether_type;
}

header ipv4_t {
    bit<4> version;
    bit<4> ihl;
    bit<8> dscp_ecn;
    bit<16> total_len;
    bit<16> identification;
    bit<3> flags;
    bit<13> frag_offset;
    bit<8> ttl;
    bit<8> protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

header ipv6_t {
    bit<4> version;
    bit<8> traffic_class;
    bit<20> flow_label;
    bit<16> payload_len;
    bit<8> next_hdr;
    bit<8> hop_limit;
    bit<128> src_addr;
    bit<128> dst_addr;
}

header ipv6_fragment_t {
    bit<8> next_hdr;
    bit<8> reserved;
    bit<13> frag_offset;
    bit<2> res;
    bit<1> more;
    bit<32> identification;
}

header ports_t {
    bit<16> sport;
    bit<16> dport;
}

header tcp_rest_t {
    bit<32> seq;
    bit<32> ack;
    bit<4> data_offset;
    bit<4> reserved;
    bit<8> flags;
}

header icmp_t {
    bit<8> icmp_type;
    bit<8> icmp_code;
}

struct headers_t {
    ethernet_t ethernet;
    vlan_t vlan;
    vlan_t vlan2;
    ipv4_t ipv4;
    ipv6_t ipv6;
    ipv6_fragment_t ipv6_fragment;
    ports_t ports;
    tcp_rest_t tcp;
    icmp_t icmp;
}

struct metadata_t {
    bit<2> family;
    bit<32> src_v4;
    bit<32> dst_v4;
    bit<128> src_v6;
    bit<128> dst_v6;
    bit<8> ip_proto;
    bit<1> l4_valid;
    bit<16> sport;
    bit<16> dport;
    bit<8> icmp_type;
    bit<8> icmp_code;
    bit<1> tcp_established;
    bit<16> src_id;
    bit<16> dst_id;
    bit<2> color;
}

parser AnyplaneParser(packet_in packet, out headers_t hdr, inout metadata_t meta,
                      inout standard_metadata_t standard_metadata) {
    state start {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_VLAN: parse_vlan;
            ETHERTYPE_QINQ: parse_vlan;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default: accept;
        }
    }

    state parse_vlan {
        packet.extract(hdr.vlan);
        transition select(hdr.vlan.ether_type) {
            ETHERTYPE_VLAN: parse_vlan2;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default: accept;
        }
    }

    state parse_vlan2 {
        packet.extract(hdr.vlan2);
        transition select(hdr.vlan2.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_IPV6: parse_ipv6;
            default: accept;
        }
    }

    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        meta.family = FAMILY_IPV4;
        meta.ip_proto = hdr.ipv4.protocol;
        transition select(hdr.ipv4.ihl) {
            5: parse_ipv4_payload;
            default: skip_ipv4_options;
        }
    }

    state skip_ipv4_options {
        packet.advance(((bit<32>)hdr.ipv4.ihl - 5) * 32);
        transition parse_ipv4_payload;
    }

    state parse_ipv4_payload {
        /* Non-first fragments carry no transport header. */
        transition select(hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (0, PROTO_TCP): parse_tcp;
            (0, PROTO_UDP): parse_ports;
            (0, PROTO_ICMP): parse_icmp;
            default: accept;
        }
    }

    state parse_ipv6 {
        packet.extract(hdr.ipv6);
        meta.family = FAMILY_IPV6;
        meta.ip_proto = hdr.ipv6.next_hdr;
        transition select(hdr.ipv6.next_hdr) {
            IPV6_FRAGMENT: parse_ipv6_fragment;
            PROTO_TCP: parse_tcp;
            PROTO_UDP: parse_ports;
            PROTO_ICMP6: parse_icmp;
            default: accept;
        }
    }

    state parse_ipv6_fragment {
        packet.extract(hdr.ipv6_fragment);
        meta.ip_proto = hdr.ipv6_fragment.next_hdr;
        transition select(hdr.ipv6_fragment.frag_offset, hdr.ipv6_fragment.next_hdr) {
            (0, PROTO_TCP): parse_tcp;
            (0, PROTO_UDP): parse_ports;
            (0, PROTO_ICMP6): parse_icmp;
            default: accept;
        }
    }

    state parse_ports {
        packet.extract(hdr.ports);
        transition accept;
    }

    state parse_tcp {
        packet.extract(hdr.ports);
        packet.extract(hdr.tcp);
        transition accept;
    }

    state parse_icmp {
        packet.extract(hdr.icmp);
        transition accept;
    }
}

control AnyplaneVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control AnyplaneIngress(inout headers_t hdr, inout metadata_t meta,
                        inout standard_metadata_t standard_metadata) {
    direct_counter(CounterType.packets_and_bytes) acl_counter;
    meter(1024, MeterType.packets) rate_meters;

    action set_src_id(bit<16> id) {
        meta.src_id = id;
    }

    action set_dst_id(bit<16> id) {
        meta.dst_id = id;
    }

    action acl_allow() {
        acl_counter.count();
    }

    action acl_deny() {
        acl_counter.count();
        mark_to_drop(standard_metadata);
    }

    action acl_rate_limit(bit<32> meter_index) {
        acl_counter.count();
        rate_meters.execute_meter(meter_index, meta.color);
        if (meta.color == 2) {
            mark_to_drop(standard_metadata);
        }
    }

    table src_endpoint_v4 {
        key = {
            meta.src_v4: lpm;
        }
        actions = {
            set_src_id;
        }
        default_action = set_src_id(0);
        size = 4096;
    }

    table src_endpoint_v6 {
        key = {
            meta.src_v6: lpm;
        }
        actions = {
            set_src_id;
        }
        default_action = set_src_id(0);
        size = 4096;
    }

    table dst_endpoint_v4 {
        key = {
            meta.dst_v4: lpm;
        }
        actions = {
            set_dst_id;
        }
        default_action = set_dst_id(0);
        size = 4096;
    }

    table dst_endpoint_v6 {
        key = {
            meta.dst_v6: lpm;
        }
        actions = {
            set_dst_id;
        }
        default_action = set_dst_id(0);
        size = 4096;
    }

    table acl {
        key = {
            meta.family: ternary;
            meta.src_id: ternary;
            meta.dst_id: ternary;
            meta.src_v4: ternary;
            meta.dst_v4: ternary;
            meta.src_v6: ternary;
            meta.dst_v6: ternary;
            meta.ip_proto: ternary;
            meta.l4_valid: ternary;
            meta.sport: ternary;
            meta.dport: ternary;
            meta.icmp_type: ternary;
            meta.icmp_code: ternary;
            meta.tcp_established: ternary;
        }
        actions = {
            acl_allow;
            acl_deny;
            acl_rate_limit;
        }
        /* Fail closed until the controller writes the policy's default. */
        default_action = acl_deny();
        counters = acl_counter;
        size = 16384;
    }

    apply {
        /* A bump in the wire: what comes in on port 2k leaves on 2k+1 and back, unless denied. */
        standard_metadata.egress_spec = standard_metadata.ingress_port ^ 9w1;
        if (hdr.ipv4.isValid()) {
            meta.src_v4 = hdr.ipv4.src_addr;
            meta.dst_v4 = hdr.ipv4.dst_addr;
            src_endpoint_v4.apply();
            dst_endpoint_v4.apply();
        } else if (hdr.ipv6.isValid()) {
            meta.src_v6 = hdr.ipv6.src_addr;
            meta.dst_v6 = hdr.ipv6.dst_addr;
            src_endpoint_v6.apply();
            dst_endpoint_v6.apply();
        } else {
            /* Not IP: the policy does not speak about it. */
            return;
        }
        if (hdr.ports.isValid()) {
            meta.l4_valid = 1;
            meta.sport = hdr.ports.sport;
            meta.dport = hdr.ports.dport;
        } else if (hdr.icmp.isValid()) {
            meta.l4_valid = 1;
            meta.icmp_type = hdr.icmp.icmp_type;
            meta.icmp_code = hdr.icmp.icmp_code;
        }
        if (hdr.tcp.isValid() && (hdr.tcp.flags & TCP_ACK_OR_RST) != 0) {
            meta.tcp_established = 1;
        }
        acl.apply();
    }
}

control AnyplaneEgress(inout headers_t hdr, inout metadata_t meta,
                       inout standard_metadata_t standard_metadata) {
    apply { }
}

control AnyplaneComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control AnyplaneDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.vlan);
        packet.emit(hdr.vlan2);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.ipv6);
        packet.emit(hdr.ipv6_fragment);
        packet.emit(hdr.ports);
        packet.emit(hdr.tcp);
        packet.emit(hdr.icmp);
    }
}

V1Switch(AnyplaneParser(), AnyplaneVerifyChecksum(), AnyplaneIngress(), AnyplaneEgress(),
         AnyplaneComputeChecksum(), AnyplaneDeparser()) main;
