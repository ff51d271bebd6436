"""Frames for flows and flows for frames: what BPF_PROG_TEST_RUN is fed, and pcap reading.

`frame(flow)` builds an Ethernet frame carrying the flow's headers (optionally
behind VLAN tags, with IPv4 options or IPv6 extension headers). `parse(frame)`
reads a frame the way the XDP program does and returns the flow it judges,
or NOT_IP / MALFORMED with the verdict those get (docs/engines.md).
"""

from __future__ import annotations

import struct

from anyplane.ir.flow import ICMP, ICMP6, TCP, UDP, Flow

NOT_IP, MALFORMED = "not-ip", "malformed"
ETH_IP, ETH_IP6, ETH_VLAN, ETH_QINQ, ETH_ARP = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806
MACS = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
EXT_HEADERS = (0, 43, 44, 60)  # walked; AH (51) and ESP (50) are protocols, as in IPv4
MAX_EXT_HEADERS = 6
MAX_VLANS = 2


TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}


def _l4(f: Flow, tcp: str = "S") -> bytes:
    if f.fragment:
        return b"\x00" * 8
    if f.proto == TCP:
        flags = sum(TCP_FLAGS[c] for c in set(tcp))
        return struct.pack("!HHIIBBHHH", f.sport, f.dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    if f.proto == UDP:
        return struct.pack("!HHHH", f.sport, f.dport, 8, 0)
    if f.is_icmp:
        return struct.pack("!BBHI", f.icmp_type, f.icmp_code, 0, 0)
    return b""


def frame(f: Flow, vlans: int = 0, ip_options: bytes = b"", ext_headers: list[tuple[int, bytes]] = (),
          payload: bytes = b"", tcp: str = "S", quoted: Flow | None = None) -> bytes:
    """An Ethernet frame for the flow; fragments are emitted as non-first fragments. `tcp`: the TCP
    flags (letters of F S R P A; a SYN by default); `quoted`: for an ICMP error, the packet it is about
    (its IP header and first 8 bytes follow the ICMP header, as RFC 792 and 4443 say)."""
    if quoted is not None:
        payload = frame(quoted)[14:][:(20 if quoted.family == 4 else 40) + 8] + payload
    l4 = _l4(f, tcp) + payload
    if f.family == 4:
        ihl = 5 + len(ip_options) // 4
        frag = 0x2000 | 1 if f.fragment else 0  # offset 8 bytes: not the first fragment
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(l4), 1, frag, 64, f.proto, 0,
                         f.src.to_bytes(4, "big"), f.dst.to_bytes(4, "big")) + ip_options
        body, ethertype = ip + l4, ETH_IP
    else:
        exts = list(ext_headers)
        if f.fragment:
            exts.append((44, struct.pack("!HI", 1 << 3, 7)))
        chain, protos = b"", [h for h, _ in exts] + [f.proto]
        for (kind, data), nxt in zip(exts, protos[1:]):
            if kind == 44:
                chain += struct.pack("!BB", nxt, 0) + data
            elif kind == 51:  # AH counts 4-octet units, minus 2
                chain += struct.pack("!BB", nxt, (len(data) + 2) // 4 - 2) + data
            else:
                chain += struct.pack("!BB", nxt, (len(data) + 2) // 8 - 1) + data
        first = protos[0]
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(l4), first, 64,
                         f.src.to_bytes(16, "big"), f.dst.to_bytes(16, "big"))
        body, ethertype = ip + chain + l4, ETH_IP6
    tags = b"".join(struct.pack("!HH", ETH_QINQ if i == 0 and vlans > 1 else ETH_VLAN, 100 + i) for i in range(vlans))
    return MACS + tags + struct.pack("!H", ethertype) + body


def parse(data: bytes):
    """The flow the XDP program judges for a frame, or NOT_IP / MALFORMED."""
    if len(data) < 14:
        return MALFORMED
    ethertype, at = struct.unpack_from("!H", data, 12)[0], 14
    for _ in range(MAX_VLANS):
        if ethertype not in (ETH_VLAN, ETH_QINQ):
            break
        if len(data) < at + 4:
            return MALFORMED
        ethertype = struct.unpack_from("!H", data, at + 2)[0]
        at += 4
    if ethertype in (ETH_VLAN, ETH_QINQ):
        return MALFORMED
    if ethertype == ETH_IP:
        if len(data) < at + 20 or data[at] >> 4 != 4 or data[at] & 15 < 5:
            return MALFORMED
        ihl = (data[at] & 15) * 4
        if len(data) < at + ihl:
            return MALFORMED
        frag = struct.unpack_from("!H", data, at + 6)[0] & 0x1FFF
        proto = data[at + 9]
        src, dst = (int.from_bytes(data[at + 12:at + 16], "big"), int.from_bytes(data[at + 16:at + 20], "big"))
        return _finish(4, src, dst, proto, data, at + ihl, frag != 0)
    if ethertype == ETH_IP6:
        if len(data) < at + 40 or data[at] >> 4 != 6:
            return MALFORMED
        nxt = data[at + 6]
        src, dst = int.from_bytes(data[at + 8:at + 24], "big"), int.from_bytes(data[at + 24:at + 40], "big")
        hdr = at + 40
        for _ in range(MAX_EXT_HEADERS):
            if nxt not in EXT_HEADERS:
                break
            if len(data) < hdr + 8:
                return MALFORMED
            if nxt == 44:
                offset = struct.unpack_from("!H", data, hdr + 2)[0] >> 3
                nxt, hdr = data[hdr], hdr + 8
                if offset:
                    return Flow(6, src, dst, nxt, fragment=True)
                continue
            length = (data[hdr + 1] + 1) * 8
            nxt, hdr = data[hdr], hdr + length
        if nxt in EXT_HEADERS or len(data) < hdr:
            return MALFORMED
        return _finish(6, src, dst, nxt, data, hdr, False)
    return NOT_IP


def parse_packet(data: bytes):
    """The packet the XDP program judges, with its TCP flags and (for an ICMP error) the packet it
    quotes, as `ir.conn.Packet`; or NOT_IP / MALFORMED."""
    from anyplane.ir.conn import Packet, is_error

    flow = parse(data)
    if isinstance(flow, str):
        return flow
    at = len(data) - _l4_length(data, flow)
    tcp = ""
    if flow.proto == TCP and not flow.fragment and len(data) >= at + 14:
        bits = data[at + 13]
        tcp = "".join(c for c, b in TCP_FLAGS.items() if bits & b)
    quoted = None
    if is_error(flow):
        inner = data[at + 8:]
        ethertype = ETH_IP if flow.family == 4 else ETH_IP6
        q = parse(MACS + struct.pack("!H", ethertype) + inner) if inner else MALFORMED
        if not isinstance(q, str) and not q.fragment:
            quoted = q
    return Packet(flow, tcp, quoted)


def _l4_length(data: bytes, flow: Flow) -> int:
    """Bytes from the L4 header to the end of the frame (found by parsing again up to it)."""
    ethertype, at = struct.unpack_from("!H", data, 12)[0], 14
    while ethertype in (ETH_VLAN, ETH_QINQ):
        ethertype, at = struct.unpack_from("!H", data, at + 2)[0], at + 4
    if ethertype == ETH_IP:
        return len(data) - (at + (data[at] & 15) * 4)
    nxt, hdr = data[at + 6], at + 40
    while nxt in EXT_HEADERS:
        length = 8 if nxt == 44 else (data[hdr + 1] + 1) * 8
        nxt, hdr = data[hdr], hdr + length
    return len(data) - hdr


def _finish(family, src, dst, proto, data, l4, fragment):
    if fragment:
        return Flow(family, src, dst, proto, fragment=True)
    if proto in (TCP, UDP):
        if len(data) < l4 + 4:
            return MALFORMED
        sport, dport = struct.unpack_from("!HH", data, l4)
        return Flow(family, src, dst, proto, sport, dport)
    if (proto, family) in ((ICMP, 4), (ICMP6, 6)):
        if len(data) < l4 + 2:
            return MALFORMED
        return Flow(family, src, dst, proto, icmp_type=data[l4], icmp_code=data[l4 + 1])
    return Flow(family, src, dst, proto)


def read_pcap(path: str) -> list[bytes]:
    """Ethernet frames of a classic pcap file (either byte order, micro- or nanosecond stamps)."""
    with open(path, "rb") as fh:
        blob = fh.read()
    if len(blob) < 24:
        raise ValueError(f"{path}: not a pcap file (too short)")
    magic = blob[:4]
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
             b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if order is None:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not read)")
    linktype = struct.unpack_from(order + "I", blob, 20)[0]
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype} is not Ethernet")
    frames, at = [], 24
    while at + 16 <= len(blob):
        incl = struct.unpack_from(order + "I", blob, at + 8)[0]
        frames.append(blob[at + 16:at + 16 + incl])
        at += 16 + incl
    return frames


def write_pcap(path: str, frames: list[bytes]) -> None:
    """A classic little-endian pcap of Ethernet frames."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n, f in enumerate(frames):
            fh.write(struct.pack("<IIII", n, 0, len(f), len(f)) + f)
