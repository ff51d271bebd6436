"""The P4 program (from the jinja2 template) and its P4Info, built from one description.

The program's shape depends only on the feature set: whether the target has
range match (`--no-range` makes port keys ternary) and the table sizes. A
policy change is an entries change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import ids as I
from .proto import p4info_pb2

CONTROL = "AnyplaneIngress"
ID_BITS = 16
TEMPLATES = Path(__file__).resolve().parent / "templates"

EXACT, LPM, TERNARY, RANGE = (p4info_pb2.MatchField.EXACT, p4info_pb2.MatchField.LPM,
                              p4info_pb2.MatchField.TERNARY, p4info_pb2.MatchField.RANGE)


@dataclass(frozen=True)
class Features:
    """What the target offers and how large the tables are."""

    range_match: bool = True
    acl_size: int = 16384
    endpoint_size: int = 4096
    meter_size: int = 1024


def acl_keys(features: Features) -> list[tuple[str, int, int]]:
    """(name, bit width, match kind) of the acl table's keys, in declaration order."""
    port = RANGE if features.range_match else TERNARY
    return [("meta.family", 2, TERNARY), ("meta.src_id", ID_BITS, TERNARY), ("meta.dst_id", ID_BITS, TERNARY),
            ("meta.src_v4", 32, TERNARY), ("meta.dst_v4", 32, TERNARY),
            ("meta.src_v6", 128, TERNARY), ("meta.dst_v6", 128, TERNARY),
            ("meta.ip_proto", 8, TERNARY), ("meta.l4_valid", 1, TERNARY),
            ("meta.sport", 16, port), ("meta.dport", 16, port),
            ("meta.icmp_type", 8, TERNARY), ("meta.icmp_code", 8, TERNARY), ("meta.tcp_established", 1, TERNARY)]


ENDPOINT_TABLES = [(f"{side}_endpoint_{fam}", f"meta.{side}_{fam}", 32 if fam == "v4" else 128, f"set_{side}_id")
                   for side in ("src", "dst") for fam in ("v4", "v6")]
ACL_ACTIONS = ("acl_allow", "acl_deny", "acl_rate_limit")


def program_text(features: Features) -> str:
    """The P4_16 source."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template("anyplane.p4.j2").render(
        range_match=features.range_match, port_kind="range" if features.range_match else "ternary",
        id_bits=ID_BITS, acl_size=features.acl_size, endpoint_size=features.endpoint_size,
        meter_size=features.meter_size)


def _alias(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def p4info(features: Features) -> p4info_pb2.P4Info:
    """The P4Info p4c would produce for the program (names and IDs as p4c assigns them)."""
    ids = I.Ids()
    info = p4info_pb2.P4Info()
    info.pkg_info.arch = "v1model"
    # p4c assigns action IDs first, in declaration order, then tables, then externs.
    actions = {}
    for name, params in [("set_src_id", [("id", ID_BITS)]), ("set_dst_id", [("id", ID_BITS)]),
                         ("acl_allow", []), ("acl_deny", []), ("acl_rate_limit", [("meter_index", 32)])]:
        full = f"{CONTROL}.{name}"
        a = info.actions.add()
        a.preamble.id = ids.get(I.ACTION, full)
        a.preamble.name = full
        a.preamble.alias = name
        for k, (pname, bits) in enumerate(params, start=1):
            p = a.params.add()
            p.id, p.name, p.bitwidth = k, pname, bits
        actions[name] = a.preamble.id
    tables = {}
    for tname, key, bits, action in ENDPOINT_TABLES:
        full = f"{CONTROL}.{tname}"
        t = info.tables.add()
        t.preamble.id = ids.get(I.TABLE, full)
        t.preamble.name, t.preamble.alias = full, tname
        mf = t.match_fields.add()
        mf.id, mf.name, mf.bitwidth, mf.match_type = 1, key, bits, LPM
        t.action_refs.add().id = actions[action]
        # The program's `default_action = set_<side>_id(0)`, written as p4c writes it (the full width).
        t.initial_default_action.action_id = actions[action]
        arg = t.initial_default_action.arguments.add()
        arg.param_id, arg.value = 1, bytes((ID_BITS + 7) // 8)
        t.size = features.endpoint_size
        tables[tname] = t.preamble.id
    full = f"{CONTROL}.acl"
    acl = info.tables.add()
    acl.preamble.id = ids.get(I.TABLE, full)
    acl.preamble.name, acl.preamble.alias = full, "acl"
    for k, (name, bits, kind) in enumerate(acl_keys(features), start=1):
        mf = acl.match_fields.add()
        mf.id, mf.name, mf.bitwidth, mf.match_type = k, name, bits, kind
    for name in ACL_ACTIONS:
        acl.action_refs.add().id = actions[name]
    acl.initial_default_action.action_id = actions["acl_deny"]  # until the controller writes the policy's
    acl.size = features.acl_size
    tables["acl"] = acl.preamble.id
    counter = info.direct_counters.add()
    counter.preamble.id = ids.get(I.DIRECT_COUNTER, f"{CONTROL}.acl_counter")
    counter.preamble.name, counter.preamble.alias = f"{CONTROL}.acl_counter", "acl_counter"
    counter.spec.unit = p4info_pb2.CounterSpec.BOTH
    counter.direct_table_id = acl.preamble.id
    acl.direct_resource_ids.append(counter.preamble.id)
    meter = info.meters.add()
    meter.preamble.id = ids.get(I.METER, f"{CONTROL}.rate_meters")
    meter.preamble.name, meter.preamble.alias = f"{CONTROL}.rate_meters", "rate_meters"
    meter.spec.unit = p4info_pb2.MeterSpec.PACKETS
    meter.size = features.meter_size
    info.type_info.SetInParent()  # p4c writes it, empty: the program declares no named types
    return info


class Names:
    """Name <-> ID lookups over a P4Info."""

    def __init__(self, info: p4info_pb2.P4Info):
        self.info = info
        self.tables = {t.preamble.alias: t for t in info.tables}
        self.actions = {a.preamble.alias: a for a in info.actions}
        self.meter = info.meters[0] if info.meters else None

    def table(self, alias: str):
        return self.tables[alias]

    def field_id(self, table: str, name: str) -> int:
        return next(mf.id for mf in self.tables[table].match_fields if mf.name == name)

    def action_id(self, alias: str) -> int:
        return self.actions[alias].preamble.id


__all__ = ["Features", "program_text", "p4info", "acl_keys", "Names", "ENDPOINT_TABLES", "ID_BITS"]
