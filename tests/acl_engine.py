"""An engine written inside the test suite: a first-match text ACL, as a router or cloud firewall holds.

It proves that adding an engine is one class implementing `backends.base.Engine`
and one `registry.register` call: compile, placement, the composition proof and
the conformance harness then work without touching compiler/ or verify/.

    # anyplane first-match ACL (generated)
    owner 10.0.1.0/24 productpage
    default deny
    deny src.id=in:internet dst.ip=prefix:10.0.3.0/24 proto=eq:6 dport=range:3306-3306 rule=r7
    permit src.id=in:office dst.id=in:reviews proto=eq:6 dport=range:9080-9080 rule=r2

Addresses belong to the owner with the longest prefix; the first line that
matches decides; without one, the default. The engine sees no HTTP: it holds the
L4 projection of its program.
"""

from __future__ import annotations

import ipaddress

from anyplane.backends import base
from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.addr import Prefix
from anyplane.ir.match import AnyOf, Exact, InSet, Match, PrefixMatch, Range, options
from anyplane.ir.nodes import Entry, Program, Table, decision_key
from anyplane.ir.project import project_l4

ID_FIELDS = (F.SRC_ID, F.DST_ID)
CAPABILITY = base.Capability(engine="textacl", place="firewall", fields=base.L4_FIELDS, families=(4, 6),
                             actions=("allow", "deny"), capacity=None, state="connections")


def _prefix(text: str) -> Prefix:
    net = ipaddress.ip_network(text)
    return Prefix(net.version, int(net.network_address), net.prefixlen)


def _field(name: str, fm) -> str:
    opts = options(fm)
    if all(isinstance(o, PrefixMatch) for o in opts):
        return f"{name}=prefix:" + "|".join(str(o.prefix) for o in opts)
    if all(isinstance(o, Range) for o in opts):
        return f"{name}=range:" + "|".join(f"{o.lo}-{o.hi}" for o in opts)
    if isinstance(fm, InSet):
        return f"{name}=in:" + ",".join(str(v) for v in fm.values)
    if isinstance(fm, Exact):
        return f"{name}=eq:{fm.value}"
    raise base.Unsupported(f"{name}: {type(fm).__name__}")


def _parse_field(token: str):
    name, _, rest = token.partition("=")
    kind, _, value = rest.partition(":")
    if kind == "prefix":
        opts = tuple(PrefixMatch(_prefix(v)) for v in value.split("|"))
    elif kind == "range":
        opts = tuple(Range(int(a), int(b)) for a, b in (v.split("-") for v in value.split("|")))
    elif kind == "in":
        values = value.split(",")
        return name, InSet(tuple(values) if name in ID_FIELDS else tuple(int(v) for v in values))
    else:
        return name, Exact(int(value))
    return name, opts[0] if len(opts) == 1 else AnyOf(opts)


def render(program: Program) -> str:
    """The ACL text for a program: its L4 projection, one line per entry in decision order."""
    projected = project_l4(program)
    lines = ["# anyplane first-match ACL (generated)"]
    lines += [f"owner {row.prefix} {row.identity}" for row in sorted(projected.endpoints, key=lambda r: r.prefix)]
    lines.append(f"default {projected.default}")
    for e in sorted(projected.acl.entries, key=decision_key):
        verdict = "deny" if isinstance(e.action, Deny) else "permit"
        lines.append(" ".join([verdict] + [_field(n, fm) for n, fm in e.match.fields] + [f"rule={e.rule}"]))
    return "\n".join(lines) + "\n"


def parse(text: str, program: Program) -> Program:
    """The ACL text read back as IR: the entries in their order, the default; owners must be the policy's."""
    rules = {r.id: r for r in program.rules}
    entries, owners, default = [], [], "deny"
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "owner":
            owners.append((_prefix(words[1]), words[2]))
        elif words[0] == "default":
            default = words[1]
        else:
            fields = dict(_parse_field(w) for w in words[1:-1])
            rule = words[-1].removeprefix("rule=")
            entries.append((Match.of(fields), Deny() if words[0] == "deny" else Allow(), rule))
    if sorted(owners) != sorted((row.prefix, row.identity) for row in program.endpoints):
        raise base.EngineError("the ACL's owner table is not the policy's")
    n = len(entries)
    acl = tuple(Entry(n - k, m, a, rules[r].origin, r) for k, (m, a, r) in enumerate(entries))
    return Program(default=default, default_origin=program.default_origin, identities=program.identities,
                   endpoints=program.endpoints, acl=Table("textacl", acl), routes=Table("routes", ()),
                   limits=(), asserts=(), rules=program.rules)


def run(text: str, flow) -> str:
    """The ACL's verdict for a flow ("allow" / "deny"), read straight from the text (as a device would:
    its own owner lookup and first-match scan, not the interpreter)."""
    owners, lines, default = [], [], "deny"
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "owner":
            owners.append((ipaddress.ip_network(words[1]), words[2]))
        elif words[0] == "default":
            default = words[1]
        else:
            lines.append((words[0], [w.partition("=") for w in words[1:-1]]))
    f = flow.without_http()
    ip = {side: (ipaddress.IPv4Address if f.family == 4 else ipaddress.IPv6Address)(getattr(f, side))
          for side in ("src", "dst")}
    own = {}
    for side in ("src", "dst"):
        best = max(((net, who) for net, who in owners if ip[side] in net), key=lambda nw: nw[0].prefixlen,
                   default=(None, None))
        own[side] = best[1]
    values = {"proto": f.proto, "sport": f.sport, "dport": f.dport, "icmp.type": f.icmp_type,
              "icmp.code": f.icmp_code}

    def holds(name: str, test: str) -> bool:
        kind, _, arg = test.partition(":")
        if name in ("src.id", "dst.id"):
            return own[name[:3]] in arg.split(",")
        if name in ("src.ip", "dst.ip"):
            return any(ip[name[:3]] in ipaddress.ip_network(n) for n in arg.split("|")
                       if ipaddress.ip_network(n).version == f.family)
        v = values[name]
        if v is None:
            return False
        if kind == "range":
            return any(int(a) <= v <= int(b) for a, b in (r.split("-") for r in arg.split("|")))
        if kind == "in":
            return v in {int(x) for x in arg.split(",")}
        return v == int(arg)

    for verdict, tests in lines:
        if all(holds(name, test) for name, _, test in tests):
            return "deny" if verdict == "deny" else "allow"
    return default


class TextAclEngine(base.Engine):
    """A first-match text ACL at place `firewall`."""

    name, place, capability = "textacl", "firewall", CAPABILITY

    def emit(self, program: Program, options: base.Options) -> base.Output:
        text = render(program)
        out = base.Output([base.Artifact("acl.txt", text)])
        out.report = base.rule_rows(program, lambda r: (base.ENFORCED, "", 0))
        out.read_back = lambda: parse(text, program)
        return out


ENGINE = TextAclEngine()
