"""P4Runtime table semantics, written from the P4 program and the P4Runtime spec (not from the IR).

`Switch(p4info, device)` runs a frame the way the anyplane v1model program
does: its parser (Ethernet, up to two VLAN tags, IPv4 with options and
fragments, IPv6 with a fragment header, TCP/UDP ports and TCP flags, ICMP), the endpoint
LPM tables (longest prefix wins, default id 0), then the acl table
(ternary / range / LPM / exact; among matching entries the highest
priority wins; no match: the default action). Entries are read from the
test server's device, i.e. as the switch received them.
"""

from __future__ import annotations

import struct

from anyplane.backends.p4.proto import p4info_pb2

MF = p4info_pb2.MatchField


def parse(frame: bytes) -> dict | None:
    """The program's metadata for a frame (None when it is not IP: the program lets it pass)."""
    ethertype, at = struct.unpack_from("!H", frame, 12)[0], 14
    for _ in range(2):
        if ethertype not in (0x8100, 0x88A8):
            break
        ethertype, at = struct.unpack_from("!H", frame, at + 2)[0], at + 4
    meta = dict.fromkeys(["src_v4", "dst_v4", "src_v6", "dst_v6", "sport", "dport", "icmp_type", "icmp_code",
                          "l4_valid", "src_id", "dst_id", "tcp_established"], 0)
    if ethertype == 0x0800:
        ihl = frame[at] & 0x0F
        frag = struct.unpack_from("!H", frame, at + 6)[0] & 0x1FFF
        proto = frame[at + 9]
        meta.update(family=1, ip_proto=proto, src_v4=int.from_bytes(frame[at + 12:at + 16], "big"),
                    dst_v4=int.from_bytes(frame[at + 16:at + 20], "big"))
        at += 4 * ihl
        transport = proto if frag == 0 else None
        icmp = 1
    elif ethertype == 0x86DD:
        nxt = frame[at + 6]
        meta.update(family=2, ip_proto=nxt, src_v6=int.from_bytes(frame[at + 8:at + 24], "big"),
                    dst_v6=int.from_bytes(frame[at + 24:at + 40], "big"))
        at += 40
        transport = nxt
        if nxt == 44:
            nxt = frame[at]
            offset = struct.unpack_from("!H", frame, at + 2)[0] >> 3
            meta["ip_proto"] = nxt
            at += 8
            transport = nxt if offset == 0 else None
        icmp = 58
    else:
        return None
    if transport in (6, 17):
        meta.update(l4_valid=1, sport=struct.unpack_from("!H", frame, at)[0],
                    dport=struct.unpack_from("!H", frame, at + 2)[0])
        if transport == 6 and len(frame) >= at + 14:  # ACK or RST set: an "established" segment
            meta["tcp_established"] = int(bool(frame[at + 13] & 0x14))
    elif transport == icmp:
        meta.update(l4_valid=1, icmp_type=frame[at], icmp_code=frame[at + 1])
    return meta


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


class Table:
    """One table's entries, decoded."""

    def __init__(self, spec: p4info_pb2.Table, entries, default):
        self.spec = spec
        self.fields = {mf.id: (mf.name.split(".", 1)[1], mf.bitwidth, mf.match_type) for mf in spec.match_fields}
        self.lpm = all(mf.match_type == MF.LPM for mf in spec.match_fields)
        self.rows = []
        for e in entries:
            checks = []
            plen = 0
            for m in e.match:
                name, bits, _ = self.fields[m.field_id]
                kind = m.WhichOneof("field_match_type")
                if kind == "exact":
                    checks.append((name, "eq", _int(m.exact.value), 0))
                elif kind == "ternary":
                    checks.append((name, "mask", _int(m.ternary.value), _int(m.ternary.mask)))
                elif kind == "lpm":
                    plen = m.lpm.prefix_len
                    mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
                    checks.append((name, "mask", _int(m.lpm.value), mask))
                else:
                    checks.append((name, "range", _int(m.range.low), _int(m.range.high)))
            rank = plen if self.lpm else e.priority
            self.rows.append((rank, checks, e.action.action))
        self.rows.sort(key=lambda r: -r[0])
        self.default = default

    def lookup(self, meta: dict):
        """The action of the best matching entry (longest prefix / highest priority), else the default."""
        for _, checks, action in self.rows:
            ok = True
            for name, kind, a, b in checks:
                v = meta[name]
                if kind == "eq":
                    ok = v == a
                elif kind == "mask":
                    ok = v & b == a
                else:
                    ok = a <= v <= b
                if not ok:
                    break
            if ok:
                return action
        return self.default


class Switch:
    """The program's ingress over the entries a device holds."""

    def __init__(self, info: p4info_pb2.P4Info, device, program_default: str = "acl_deny"):
        self.actions = {a.preamble.id: a.preamble.alias for a in info.actions}
        self.tables = {}
        for spec in info.tables:
            default = device.defaults.get(spec.preamble.id)
            self.tables[spec.preamble.alias] = Table(spec, device.entries(spec.preamble.alias),
                                                     default.action.action if default else None)
        self.program_default = program_default

    def verdict(self, frame: bytes) -> tuple[str, str]:
        """("allow" | "deny", action name) for one frame."""
        meta = parse(frame)
        if meta is None:
            return "allow", "not-ip"
        fam = "v4" if meta["family"] == 1 else "v6"
        for side in ("src", "dst"):
            hit = self.tables[f"{side}_endpoint_{fam}"].lookup(meta)
            meta[f"{side}_id"] = _int(hit.params[0].value) if hit is not None else 0
        action = self.tables["acl"].lookup(meta)
        name = self.actions[action.action_id] if action is not None else self.program_default
        return ("deny" if name == "acl_deny" else "allow"), name
