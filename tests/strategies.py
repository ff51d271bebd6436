"""Hypothesis strategies: random small policies (as text) over a tiny field domain.

The domain is small on purpose (a few /24s inside 10.0.0.0/16, ports near 80,
three paths) so that random rules overlap often, which is where priority,
deny-beats-allow and longest-prefix ownership matter.
"""

from __future__ import annotations

from hypothesis import strategies as st

NAMES = ("a", "b", "c", "d")
PREFIXES = ("10.0.0.0/16", "10.0.1.0/24", "10.0.2.0/24", "10.0.1.128/25", "10.0.3.0/24", "fd00::/64")
RULE_CIDRS = ("10.0.0.0/8", "10.0.1.0/24", "10.0.2.128/25", "10.0.1.7", "fd00::/112", "0.0.0.0/0")
PATHS = ("/", "/a", "/a/*", "/b/*", "/*")
METHODS = ("GET", "POST", "DELETE")


SMALL_PREFIXES = ("10.0.0.0/16", "10.0.1.0/24", "10.0.1.128/25", "fd00::/64")
SMALL_RULE_CIDRS = ("10.0.0.0/8", "10.0.1.7", "fd00::/112")


@st.composite
def services(draw, small: bool = False):
    """Declarations: names with distinct prefixes, some with an http port."""
    pool = SMALL_PREFIXES if small else PREFIXES
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3 if small else len(NAMES), unique=True))
    out = []
    for name, prefix in zip(NAMES, chosen):
        http = draw(st.booleans())
        port = " port 80 http" if http else " port 22 tcp"
        kind = "service" if http or draw(st.booleans()) else "external"
        out.append((name, kind, http and kind == "service", f"{kind} {name} {{ address {prefix}"
                    + (port if kind == "service" else "") + " }"))
    return out


def _ports(draw):
    lo = draw(st.integers(79, 82))
    hi = draw(st.integers(lo, 83))
    return str(lo) if lo == hi else f"{lo}-{hi}"


@st.composite
def rules(draw, decls, small: bool = False, groups=()):
    """One rule over the declared names, groups, `name.*`, CIDRs, small port ranges and HTTP parts,
    sometimes with `except`."""
    names = [d[0] for d in decls]
    http_names = [d[0] for d in decls if d[2]]
    family = {d[0]: {6 if "fd00" in d[3] else 4} for d in decls}
    family.update({f"{n}.*": family[n] for n in names})
    for g, members in groups:
        family[g] = set().union(*(family.get(m) or {6 if ":" in m else 4} for m in members))
    endpoints = names + [f"{names[0]}.*"] + [g for g, _ in groups] + list(SMALL_RULE_CIDRS if small else RULE_CIDRS)
    endpoints.append("any")
    fam = lambda e: {4, 6} if e == "any" else family.get(e) or {6 if ":" in e else 4}  # noqa: E731
    verdict = draw(st.sampled_from(["allow", "deny"]))
    kind = draw(st.sampled_from(["none", "tcp", "udp", "icmp", "http"] if http_names else ["none", "tcp", "udp", "icmp"]))
    # Source and destination share an address family (otherwise check rejects the rule).
    if kind == "http":
        dst = draw(st.sampled_from(http_names))
        src = draw(st.sampled_from([e for e in endpoints if fam(e) & fam(dst)]))
        methods = draw(st.sampled_from(["*", "GET", "GET, POST", "DELETE"]))
        paths = ", ".join(draw(st.lists(st.sampled_from(PATHS[:4] if small else PATHS), min_size=1, max_size=2,
                                        unique=True)))
        tail = f"http {methods} {paths}"
        if draw(st.booleans()):
            tail += draw(st.sampled_from([' header "x-k" present', ' header "x-k" = "1"', ' header "x-k" absent']))
    else:
        src = draw(st.sampled_from(endpoints))
        dst = draw(st.sampled_from([e for e in endpoints if fam(e) & fam(src)]))
        common = fam(src) & fam(dst)
        icmp = ["icmp", "icmp type echo-request"] + (["icmp type 8", "icmp type 8 code 0"] if 4 in common else []) \
            + (["icmp6", "icmp6 type 128"] if 6 in common else [])
        tail = {"none": "", "tcp": f"tcp {_ports(draw)}", "udp": f"udp {_ports(draw)}",
                "icmp": draw(st.sampled_from(icmp))}[kind]
    excluded = [n for n in names if not src.startswith(n)] + (["10.0.1.7"] if src in ("any", "10.0.0.0/8") else [])
    wide = src in ("any", "10.0.0.0/8", "0.0.0.0/0", "10.0.0.0/16") or src.endswith(".*")
    if wide and excluded and draw(st.integers(0, 5)) == 0:
        src += " except " + draw(st.sampled_from(excluded))
    text = f"{verdict} {src} -> {dst} {tail}".rstrip()
    if verdict == "allow" and draw(st.integers(0, 4)) == 0:
        text += " rate 10/s"
    prio = draw(st.integers(0, 3))
    return text + (f" priority {prio}" if prio else "")


@st.composite
def policies(draw, max_rules: int = 6, small: bool = False):
    """A whole policy as text (it may still fail checks, e.g. a family mismatch)."""
    decls = draw(services(small))
    body = [d[3] for d in decls]
    groups = []
    if len(decls) > 1 and draw(st.booleans()):
        members = [d[0] for d in decls[:2]] + draw(st.sampled_from([[], ["10.0.1.7"]]))
        groups.append(("g", members))
        body.append(f"group g {{ {', '.join(members)} }}")
    body.append(f"default {draw(st.sampled_from(['allow', 'deny']))}")
    body += draw(st.lists(rules(decls, small, groups), min_size=0, max_size=max_rules))
    return "\n".join(body) + "\n"


@st.composite
def patterns(draw, decls_text: str):
    """A query pattern over the names of a policy text."""
    names = [line.split()[1] for line in decls_text.splitlines() if line.startswith(("service", "external"))]
    ep = st.sampled_from(names + ["any", "10.0.1.0/24", "fd00::/64"])
    tail = draw(st.sampled_from(["", " tcp 80", " tcp 79-81", " udp 82", " icmp"]))
    return f"{draw(ep)} -> {draw(ep)}{tail}"
