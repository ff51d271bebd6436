"""The policy a switch holding these entries enforces, read back from the WriteRequest as IR.

This is the fabric's side of the composition proof: what is proved is what
was emitted (the P4Runtime entries), not what the compiler meant to emit.
"""

from __future__ import annotations

from dataclasses import replace

from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny
from anyplane.ir.addr import Prefix
from anyplane.ir.match import Exact, InSet, Match, PrefixMatch, Range
from anyplane.ir.nodes import EndpointPrefix, Entry, Program, Table
from anyplane.ir.source import Span

from .proto import p4info_pb2, p4runtime_pb2

FAMILY = {1: 4, 2: 6}


class LiftError(Exception):
    """An entry has a shape the compiler never emits (the message says which)."""


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _prefix_len(mask: int, width: int) -> int:
    length = bin(mask).count("1")
    if mask != ((1 << length) - 1) << (width - length):
        raise LiftError(f"mask {mask:#x} is not a prefix")
    return length


def lift(policy: Program, info: p4info_pb2.P4Info, request: p4runtime_pb2.WriteRequest, sources: list[str],
         id_names: dict[int, str]) -> Program:
    """The IR program these entries implement (endpoints from the LPM tables, acl from the acl table)."""
    tables = {t.preamble.id: t for t in info.tables}
    actions = {a.preamble.id: a.preamble.alias for a in info.actions}
    origins = {r.origin.loc: r.origin for r in policy.rules}
    rule_ids = {r.origin.loc: r.id for r in policy.rules}
    endpoints: dict[str, set[tuple[Prefix, str]]] = {"src": set(), "dst": set()}
    entries, default = [], "deny"
    for k, (u, src) in enumerate(zip(request.updates, sources)):
        if not u.entity.HasField("table_entry"):
            continue
        te = u.entity.table_entry
        table = tables[te.table_id]
        alias = table.preamble.alias
        if te.is_default_action:
            default = "allow" if actions[te.action.action.action_id] == "acl_allow" else "deny"
            continue
        if alias.endswith(("_endpoint_v4", "_endpoint_v6")):
            side, fam = alias.split("_")[0], 4 if alias.endswith("v4") else 6
            prefix = Prefix(fam, 0, 0)
            for m in te.match:
                prefix = Prefix(fam, _int(m.lpm.value), m.lpm.prefix_len)
            ident = id_names[_int(te.action.action.params[0].value)]
            endpoints[side].add((prefix, ident))
            continue
        names = {mf.id: (mf.name, mf.bitwidth) for mf in table.match_fields}
        key = {}
        for m in te.match:
            name, bits = names[m.field_id]
            kind = m.WhichOneof("field_match_type")
            if kind == "ternary":
                key[name] = ("ternary", _int(m.ternary.value), _int(m.ternary.mask), bits)
            else:
                key[name] = ("range", _int(m.range.low), _int(m.range.high), bits)
        if "meta.tcp_established" in key:
            # A reflexive entry: established TCP segments shaped like replies. The IR describes opening
            # packets, which never match it; the placement report says what it lets through.
            if key["meta.tcp_established"][1:3] != (1, 1) or actions[te.action.action.action_id] != "acl_allow":
                raise LiftError(f"entry {k}: an 'established' match that is not a reflexive allow")
            continue
        fields: dict[str, object] = {}
        family = FAMILY[key.pop("meta.family")[1]] if "meta.family" in key else None
        for side in ("src", "dst"):
            if f"meta.{side}_id" in key:
                v = key.pop(f"meta.{side}_id")[1]
                if v not in id_names:
                    raise LiftError(f"entry {k}: identity id {v} is not in the endpoint tables")
                fields[F.SRC_ID if side == "src" else F.DST_ID] = InSet((id_names[v],))
            for fam, width in ((4, 32), (6, 128)):
                name = f"meta.{side}_v{fam}"
                if name in key:
                    _, v, mask, _ = key.pop(name)
                    if family not in (None, fam):
                        raise LiftError(f"entry {k}: IPv{fam} address with another family")
                    family = fam
                    fields[F.SRC_IP if side == "src" else F.DST_IP] = PrefixMatch(
                        Prefix(fam, v, _prefix_len(mask, width)))
        if family is not None and F.SRC_IP not in fields and F.DST_IP not in fields:
            fields[F.SRC_IP] = PrefixMatch(Prefix(family, 0, 0))
        if "meta.ip_proto" in key:
            fields[F.PROTO] = Exact(key.pop("meta.ip_proto")[1])
        l4 = key.pop("meta.l4_valid", None)
        for name, fname in (("meta.sport", F.SPORT), ("meta.dport", F.DPORT)):
            if name in key:
                kind, a, b, bits = key.pop(name)
                lo, hi = (a, b) if kind == "range" else (a, a | (~b & ((1 << bits) - 1)))
                fields[fname] = Range(lo, hi) if lo != hi else Exact(lo)
        for name, fname in (("meta.icmp_type", F.ICMP_TYPE), ("meta.icmp_code", F.ICMP_CODE)):
            if name in key:
                fields[fname] = Exact(key.pop(name)[1])
        if key:
            raise LiftError(f"entry {k}: unexpected keys {sorted(key)}")
        l4_fields = {F.SPORT, F.DPORT, F.ICMP_TYPE, F.ICMP_CODE}
        if l4 is not None and not (l4_fields & set(fields)):
            raise LiftError(f"entry {k}: 'transport header present' without a port or ICMP match")
        action = Deny() if actions[te.action.action.action_id] == "acl_deny" else Allow()
        origin = origins.get(src, Span("entries.txt", k + 1, 1, k + 1, 1))
        entries.append(Entry(te.priority, Match.of(fields), action, origin, rule_ids.get(src, src)))
    if endpoints["src"] != endpoints["dst"]:
        raise LiftError("the source and destination endpoint tables differ")
    spans = {row.prefix: row.origin for row in policy.endpoints}
    rows = tuple(EndpointPrefix(p, ident, spans.get(p, Span("entries.txt", 0, 0, 0, 0)))
                 for p, ident in sorted(endpoints["src"], key=lambda x: (x[0].family, x[0].value, x[0].length)))
    return replace(policy, default=default, endpoints=rows, acl=Table("fabric", tuple(entries)),
                   routes=Table("routes", ()))
