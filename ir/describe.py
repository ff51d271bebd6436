"""A set of flows in words: names and prefixes, protocols, port ranges and HTTP conditions.

    describe(program, match) -> {"src": "monitoring (10.4.0.0/24)", "dst": "postgres (10.3.0.10/32)",
                                 "protocols": "any protocol", "ports": "any port", "http": None,
                                 "text": "monitoring (10.4.0.0/24) -> postgres (10.3.0.10/32) any protocol, any port"}

Used where an answer stands for a whole class of flows (diff), beside the
concrete witness that shows it.
"""

from __future__ import annotations

from . import fields as F
from .flow import ICMP6, PROTOCOL_NAMES
from .match import Absent, Exact, InSet, Match, Present, PrefixMatch, StrExact, StrPrefix, int_ranges, options
from .owners import ownership

PROTOCOLS = {**PROTOCOL_NAMES, ICMP6: "icmp6"}


def _end(program, m: Match, id_field: str, ip_field: str) -> str:
    ids, ips = m.get(id_field), m.get(ip_field)
    parts = []
    if ids is not None:
        prefixes = ownership(program).prefixes
        selectors = {i.name: i.selector for i in program.identities if i.selector is not None}
        for o in options(ids):
            for name in (o.values if isinstance(o, InSet) else (o.value,)):
                if name in selectors:  # a workload: its pods, whatever their addresses
                    parts.append(f"{name} (pods of {selectors[name].text()})")
                    continue
                owned = ", ".join(str(p) for p in prefixes.get(name, ())[:3])
                more = ", ..." if len(prefixes.get(name, ())) > 3 else ""
                parts.append(f"{name} ({owned}{more})" if owned else name)
    if ips is not None:
        nets = [str(o.prefix) for o in options(ips) if isinstance(o, PrefixMatch)]
        parts.append(("in " if ids is not None else "") + ", ".join(nets))
    return " ".join(parts) if parts else "any"


def _ranges(fm) -> str:
    ranges = int_ranges(fm) or []
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def _http(m: Match) -> str | None:
    http = m.get(F.HTTP)
    if http is None or isinstance(http, Absent):
        return None if http is None else "no HTTP request"
    parts = ["http"]
    method = m.get(F.HTTP_METHOD)
    if method is not None:
        values = sorted(v for o in options(method) for v in (o.values if isinstance(o, InSet) else (o.value,)))
        parts.append(",".join(values))
    path = m.get(F.HTTP_PATH)
    if path is not None:
        parts.append(", ".join(o.value + "*" if isinstance(o, StrPrefix) else o.value
                               for o in options(path) if isinstance(o, (StrExact, StrPrefix))))
    host = m.get(F.HTTP_HOST)
    if host is not None:
        parts.append("host " + ", ".join(o.value for o in options(host) if isinstance(o, (StrExact, StrPrefix))))
    for name, fm in m.fields:
        if name.startswith(F.HEADER_PREFIX):
            header = name[len(F.HEADER_PREFIX):]
            test = "present" if isinstance(fm, Present) else "absent" if isinstance(fm, Absent) else \
                "= " + ", ".join(o.value for o in options(fm) if isinstance(o, StrExact))
            parts.append(f'header "{header}" {test}')
    return " ".join(parts)


def describe(program, match: Match | None) -> dict:
    """A match (None: every flow) as words, per part and whole (`text`)."""
    m = match or Match()
    proto = m.get(F.PROTO)
    protos = sorted(v for o in options(proto) for v in ((o.value,) if isinstance(o, Exact) else
                                                          o.values if isinstance(o, InSet) else ())) \
        if proto is not None else None
    protocols = "any protocol" if proto is None else \
        ", ".join(PROTOCOLS.get(p, f"proto {p}") for p in protos) or _ranges(proto)
    dport, sport = m.get(F.DPORT), m.get(F.SPORT)
    ports = "any port" if dport is None else f"port {_ranges(dport)}"
    if sport is not None:
        ports += f" from port {_ranges(sport)}"
    icmp = None
    if m.get(F.ICMP_TYPE) is not None:
        icmp = f"type {_ranges(m.get(F.ICMP_TYPE))}"
        if m.get(F.ICMP_CODE) is not None:
            icmp += f" code {_ranges(m.get(F.ICMP_CODE))}"
    out = {"src": _end(program, m, F.SRC_ID, F.SRC_IP), "dst": _end(program, m, F.DST_ID, F.DST_IP),
           "protocols": protocols, "ports": ports if icmp is None else None, "icmp": icmp, "http": _http(m)}
    if icmp:
        l4 = f"{protocols} {icmp}"
    elif dport is not None or sport is not None:
        l4 = f"{protocols} {ports}"
    elif proto is None or set(protos or ()) <= {6, 17}:
        l4 = f"{protocols}, any port"
    else:
        l4 = protocols
    out["text"] = f"{out['src']} -> {out['dst']} {l4}" + (f" {out['http']}" if out["http"] else "")
    return out
