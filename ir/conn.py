"""Connections: the reference semantics of connection state, which the kernel engine is tested against.

A rule allows a connection to be opened. Under a stateful policy (the default):

    a packet a rule allows                          passes, and opens (or refreshes) its connection
    a reply of an allowed connection                passes (TCP, UDP, ICMP echo, any protocol)
    an ICMP error about a packet of a connection    passes ("related": path MTU discovery, unreachables)
    anything else the rules deny                    is dropped

`stateless` judges every packet alone (`evaluate`). A connection is keyed by
its opening packet's addresses, protocol and ports (ICMP echo: the host pair);
it is forgotten after a per-protocol idle timeout, after a TCP RST, a short
while after a FIN, or when the table is full and it is the least recently
used. A reply whose connection is forgotten is dropped: the engine fails
closed. Each packet of a known connection re-judges the connection's opening
packet against the policy in force, so a new policy that denies it cuts it;
a packet the rules deny going a connection's own way (an echo reply sent
toward the pinged host) is dropped, and the connection stays.
Non-first fragments carry no ports and are judged alone.

    tracker = Tracker(program)
    tracker.judge(Packet(flow, "S"), now=0.0)     -> Judgement("allow", "rule", entry)
    tracker.judge(Packet(reverse(flow), "SA"), 0.1) -> Judgement("allow", "reply", entry)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace

from .actions import Deny
from .addr import Prefix
from .flow import ICMP, ICMP6, TCP, Flow
from .interp import evaluate, field_matches, match_holds, owner
from .match import Absent, AnyOf, Exact, Match, PrefixMatch, Range, int_ranges, options
from .nodes import Entry, Program
from .project import project_l4
from .space import holes

#: ICMP queries that open a connection, and the type of their answer.
ECHO = {(4, ICMP): (8, 0), (6, ICMP6): (128, 129)}
#: ICMP errors: they quote the packet they are about, and belong to its connection.
ERRORS = {(4, ICMP): frozenset({3, 4, 5, 11, 12}), (6, ICMP6): frozenset({1, 2, 3, 4})}


def is_error(flow: Flow) -> bool:
    """Whether the flow is an ICMP error message (which quotes the packet it is about)."""
    return flow.is_icmp and flow.icmp_type in ERRORS[(flow.family, flow.proto)]


def trackable(flow: Flow) -> bool:
    """Whether a packet can belong to a connection: not a non-first fragment (no ports), and of the ICMP
    messages only echo requests and replies (errors belong to the connection they quote)."""
    if flow.fragment:
        return False
    return not flow.is_icmp or flow.icmp_type in ECHO[(flow.family, flow.proto)]


def opens(flow: Flow, tcp_flags: str = "") -> bool:
    """Whether an allowed packet opens (or refreshes) a connection: not a TCP reset, not an ICMP message
    other than an echo request, not a non-first fragment."""
    if flow.fragment:
        return False
    if flow.proto == TCP:
        return "R" not in tcp_flags
    if flow.is_icmp:
        return flow.icmp_type == ECHO[(flow.family, flow.proto)][0]
    return True


def key(flow: Flow) -> tuple:
    """A connection's key, as its opening packet gives it (ICMP echo: the host pair)."""
    return (flow.family, flow.proto, flow.src, flow.dst, flow.sport, flow.dport)


def reverse(flow: Flow) -> Flow:
    """The packet that answers this one: addresses and ports swapped; an ICMP echo request's answer is
    an echo reply, and an echo reply answers an echo request."""
    out = replace(flow, src=flow.dst, dst=flow.src, sport=flow.dport, dport=flow.sport, http=None, peer=None)
    if flow.is_icmp:
        request, reply = ECHO[(flow.family, flow.proto)]
        if flow.icmp_type in (request, reply):
            out = replace(out, icmp_type=reply if flow.icmp_type == request else request, icmp_code=0)
    return out


@dataclass(frozen=True)
class Packet:
    """One packet: its flow, TCP flags (letters of S A F R), and for an ICMP error the packet it quotes."""

    flow: Flow
    tcp: str = ""
    quoted: Flow | None = None


@dataclass
class Connection:
    """A remembered connection: its opening packet, TCP state, when it was last seen."""

    opening: Flow
    state: str  # "opening" | "established" | "closing" (TCP); "established" otherwise
    last: float


@dataclass(frozen=True)
class Judgement:
    """What the tracker does with a packet, and why: "rule" (a rule or the default decided the packet
    itself), "reply", "related" (an ICMP error about a connection's packet), "cut" (a reply of a
    connection the policy in force no longer allows)."""

    verdict: str
    why: str
    entry: Entry | None = None


@dataclass
class Tracker:
    """The connection table of one engine, with a caller-supplied clock (seconds)."""

    program: Program
    table: OrderedDict = field(default_factory=OrderedDict)

    def _timeout(self, c: Connection) -> float:
        return self.program.connections.timeout_s(c.opening.proto, c.state)

    def _find(self, k: tuple, now: float) -> Connection | None:
        c = self.table.get(k)
        if c is not None and now - c.last > self._timeout(c):
            del self.table[k]
            return None
        return c

    def lookup(self, flow: Flow, now: float) -> tuple[tuple | None, Connection | None, bool]:
        """(key, connection, whether the flow goes the connection's way) for a live connection of the
        flow in either direction."""
        if not trackable(flow):
            return None, None, True
        ways = ((key(flow), True), (key(reverse(flow)), False))
        if flow.is_icmp:  # an echo request goes its connection's way, an echo reply the other
            ways = ways[:1] if flow.icmp_type == ECHO[(flow.family, flow.proto)][0] else ways[1:]
        for k, forward in ways:
            c = self._find(k, now)
            if c is not None:
                return k, c, forward
        return None, None, True

    def judge(self, packet: Packet, now: float) -> Judgement:
        """Judge one packet at time `now`, updating the table as the engine does."""
        flow = packet.flow
        if not self.program.connections.stateful:
            d = evaluate(self.program, flow)
            return Judgement(d.verdict, "rule", d.entry)
        k, conn, forward = self.lookup(flow, now)
        if conn is not None and not forward:
            d = evaluate(self.program, conn.opening)  # the connection, under the policy in force
            if d.verdict != "allow":
                del self.table[k]
                return Judgement("deny", "cut", d.entry)
            self._touch(k, conn, packet, now, forward=False)
            return Judgement("allow", "reply", d.entry)
        if conn is not None and evaluate(self.program, conn.opening).verdict != "allow":
            del self.table[k]  # the policy in force no longer allows the connection: it is cut
            conn = None
        d = evaluate(self.program, flow)
        if d.verdict == "allow":
            if conn is not None:
                self._touch(k, conn, packet, now, forward=True)
            elif trackable(flow) and opens(flow, packet.tcp):
                self._open(flow, packet, now)
            return Judgement("allow", "rule", d.entry)
        if packet.quoted is not None and is_error(flow):
            qk, quoted, _ = self.lookup(packet.quoted, now)
            if quoted is not None:
                about = evaluate(self.program, quoted.opening)
                if about.verdict == "allow":
                    return Judgement("allow", "related", about.entry)
                del self.table[qk]
        return Judgement("deny", "rule", d.entry)

    def _open(self, flow: Flow, packet: Packet, now: float) -> None:
        limit = self.program.connections.max
        while len(self.table) >= limit:
            self.table.popitem(last=False)  # the least recently used goes
        state = "opening" if flow.proto == TCP else "established"
        if flow.proto == TCP and "F" in packet.tcp:
            state = "closing"
        self.table[key(flow)] = Connection(flow, state, now)

    def _touch(self, k: tuple, c: Connection, packet: Packet, now: float, forward: bool) -> None:
        c.last = now
        self.table.move_to_end(k)
        if c.opening.proto != TCP:
            return
        if "R" in packet.tcp:
            del self.table[k]
        elif "F" in packet.tcp:
            c.state = "closing"
        elif not forward and c.state == "opening":
            c.state = "established"


def as_reply(program: Program, flow: Flow):
    """For a packet the rules deny under a stateful policy: the decision on the connection it would
    answer (`reverse(flow)`) when that connection is allowed, else None.

    The opening is judged as the engines that keep connections judge it: by its packets, below L7
    (`project_l4`). Its first packet carries no request: a connection to an HTTP port that some
    request may use is opened (the kernel's table holds it, the sidecar accepts it and then judges
    each request), so its replies pass even where the request rules decide the requests."""
    if not program.connections.stateful or flow.fragment:
        return None
    if flow.is_icmp and flow.icmp_type not in ECHO[(flow.family, flow.proto)]:
        return None  # only echo replies answer; other ICMP messages are errors or queries
    opening = reverse(flow).without_http()
    d = evaluate(project_l4(program), opening)
    return d if d.verdict == "allow" and opens(opening) else None


_SWAP = {"src.ip": "dst.ip", "dst.ip": "src.ip", "src.id": "dst.id", "dst.id": "src.id", "sport": "dport",
         "dport": "sport"}


def swapped(m) -> dict:
    """A match's fields with its ends and ports swapped (the shape of its replies), without the protocol,
    ICMP and HTTP conditions, which the caller decides."""
    return {_SWAP.get(n, n): fm for n, fm in m.fields
            if not n.startswith(("icmp", "http")) and n not in ("proto", "src.peer")}


def reverse_matches(matches) -> tuple:
    """The openings whose replies fall in the matches: for each match without HTTP conditions, the match
    with ends and ports swapped, as a connection of a protocol other than ICMP, or as the echo request
    an echo reply of the match answers. Empty when no reply can fall in the matches."""
    out = []
    for m in matches:
        if any(name.startswith(("http", "src.peer")) and not isinstance(fm, Absent) for name, fm in m.fields):
            continue  # a reply carries no request, and no client certificate
        pairs = swapped(m)
        pairs["http"] = Absent()
        proto, icmp_type = m.get("proto"), m.get("icmp.type")
        if icmp_type is None and m.get("icmp.code") is None:
            allowed = int_ranges(proto) if proto is not None else [(0, 255)]
            for family, addresses in _by_family(pairs.get("src.ip")):
                icmp = {4: ICMP, 6: ICMP6}[family]  # the other number is a plain protocol in this family
                plain = [r for lo, hi in allowed or () for r in holes(lo, hi, (icmp,))]
                if plain:
                    out.append(Match.of(dict(pairs, proto=AnyOf(tuple(Range(lo, hi) for lo, hi in plain)),
                                             **{"src.ip": addresses})))
        for (_, number), (request, reply) in ECHO.items():
            if proto is not None and not field_matches(proto, number):
                continue
            if icmp_type is not None and not field_matches(icmp_type, reply):
                continue
            if "sport" in pairs or "dport" in pairs:
                continue  # ICMP has no ports
            out.append(Match.of({**pairs, "proto": Exact(number), "icmp.type": Exact(request),
                                 "icmp.code": Exact(0)}))
    return tuple(out)


def _by_family(fm) -> list:
    """An address match split by family: [(family, match of that family)]."""

    if fm is None:
        return [(4, PrefixMatch(Prefix(4, 0, 0))), (6, PrefixMatch(Prefix(6, 0, 0)))]
    out = []
    for family in (4, 6):
        mine = [o for o in options(fm) if isinstance(o, PrefixMatch) and o.prefix.family == family]
        if mine:
            out.append((family, mine[0] if len(mine) == 1 else AnyOf(tuple(mine))))
    return out


def established(program: Program, flow: Flow, tcp_flags: str) -> Entry | None:
    """What an engine with a TCP `established` match (a switch) lets through as a reply without keeping
    connections: a TCP segment with ACK or RST set whose reverse an allow of the policy matches (the
    allow's entry; None otherwise). Such a segment passes whether or not a connection exists."""

    if not program.connections.stateful or flow.proto != TCP or flow.fragment or not set(tcp_flags) & {"A", "R"}:
        return None
    back = reverse(flow)
    ids = owner(program, back.family, back.src), owner(program, back.family, back.dst)
    return next((e for e in program.acl.entries if not isinstance(e.action, Deny) and match_holds(e.match, back, *ids)),
                None)
