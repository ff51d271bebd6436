"""The fabric engine's entry points: emit the program, P4Info and entries; the compile report.

    emit(program, features)
      anyplane.p4        P4_16 source for v1model
      p4info.txt/.json   its P4Info (IDs as p4c assigns them)
      entries.txt/.json  the policy as one P4Runtime WriteRequest
      report.txt         how each rule is enforced, and how many entries it took
"""

from __future__ import annotations

from collections import Counter

import json

from google.protobuf import json_format, text_format

from anyplane.ir.actions import RateLimit
from anyplane.ir.nodes import Program
from anyplane.ir.project import PROJECTED, enforcement, l7_conditions
from anyplane.ir.source import DiagnosticError, error

from .. import base
from .entries import Entries, Unsupported, add_updates, build, meter_rate
from .pipeline import Features, Names, p4info, program_text
from .proto import p4runtime_pb2


CAPABILITY = base.Capability(
    engine="p4", place="fabric", fields=base.L4_FIELDS, families=(4, 6),
    actions=("allow", "deny", "packet-rate-limit", "counters"), capacity=Features().acl_size, state="tcp-established")


class P4Error(base.EngineError):
    """The policy does not fit the program, or a push failed (the message says why)."""


def write_request(names: Names, entries: Entries, device_id: int = 1,
                  election_id: tuple[int, int] = (0, 1)) -> tuple[p4runtime_pb2.WriteRequest, list[str]]:
    """The whole policy as one WriteRequest, and the source of each update."""
    req = p4runtime_pb2.WriteRequest(device_id=device_id)
    req.election_id.high, req.election_id.low = election_id
    req.atomicity = p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR
    return req, add_updates(req, names, entries)


def report(program: Program, entries: Entries) -> list[base.RuleReport]:
    """How the switch treats each rule."""
    def classify(rule):
        loc = rule.origin.loc
        if loc in entries.unsupported:
            return base.NOT_ENFORCED, entries.unsupported[loc], 0
        how = enforcement(rule)
        n = entries.per_rule.get(loc, 0)
        if how == PROJECTED:
            return base.PROJECTED, f"{l7_conditions(program, rule.id)} conditions are left to the sidecar", n
        if how != base.ENFORCED:
            return base.NOT_ENFORCED, "a deny with HTTP conditions cannot be applied below L7", 0
        if n == 0:
            return base.ENFORCED, "no entry needed: higher entries take its flows, or lower ones (or the default) decide them the same way", 0
        return base.ENFORCED, "", n
    return base.rule_rows(program, classify)


def build_all(program: Program, features: Features = Features()):
    """(P4Info, names, entries) for a program."""
    info = p4info(features)
    names = Names(info)
    try:
        entries = build(program, features)
    except Unsupported as exc:
        raise P4Error(str(exc)) from exc
    if len(entries.acl) > features.acl_size:
        raise P4Error(f"the policy needs {len(entries.acl)} acl entries; the table holds {features.acl_size}")
    check_endpoints(Counter(e.table for e in entries.endpoints), features)
    return info, names, entries


def check_endpoints(per_table: Counter, features: Features) -> None:
    """An error when an endpoint table would hold more entries than it has."""
    for table, n in sorted(per_table.items()):
        if n > features.endpoint_size:
            raise P4Error(f"the policy needs {n} entries in {table} (the addresses of its identities, a binding's "
                          f"pods among them); the table holds {features.endpoint_size}")


def emit(program: Program, features: Features = Features()) -> base.Output:
    """The artifacts `anyplane compile -t p4` writes; a rule whose values the switch cannot hold is an
    error at the rule (placement moves such rules to an engine that can)."""
    info, names, entries = build_all(program, features)
    if entries.unrepresentable:
        raise DiagnosticError([error(r.origin, "engine-limit", f"the switch cannot enforce this rule: "
                                                              f"{entries.unrepresentable[r.origin.loc]}")
                               for r in program.rules if r.origin.loc in entries.unrepresentable])
    req, sources = write_request(names, entries)
    out = base.Output(report=report(program, entries))
    out.read_back = lambda: _read_back(program, info, req, sources, entries)
    out.artifacts += [
        base.Artifact("anyplane.p4", program_text(features)),
        base.Artifact("p4info.txt", text_format.MessageToString(info)),
        base.Artifact("p4info.json", json_format.MessageToJson(info, sort_keys=True) + "\n"),
        base.Artifact("entries.txt", text_format.MessageToString(req)),
        # Compact, through the C encoder (an indented dump of 10k entries takes seconds); entries.txt is
        # the one to read.
        base.Artifact("entries.json", json.dumps(json_format.MessageToDict(req), sort_keys=True,
                                                 separators=(",", ":")) + "\n"),
        base.Artifact("identities.json", json.dumps({str(v): k for k, v in sorted(entries.ids.items(),
                                                                                  key=lambda kv: kv[1])},
                                                    indent=1) + "\n"),
    ]
    summary = (f"\nacl entries: {len(entries.acl)} ({'native ranges' if features.range_match else 'ranges as ternary'}),"
               f" naive prefix expansion: {entries.naive}; endpoint entries: {len(entries.endpoints)};"
               f" meters: {len(entries.meters)}\n")
    out.artifacts.append(base.Artifact("report.txt", out.report_text("p4 (switch)") + summary))
    return out


def lifted(program: Program, features: Features = Features()) -> Program:
    """What the emitted entries enforce, read back from the WriteRequest (for the composition proof)."""
    info, names, entries = build_all(program, features)
    req, sources = write_request(names, entries)
    return _read_back(program, info, req, sources, entries)


def _read_back(program: Program, info, req, sources: list[str], entries: Entries) -> Program:
    from .lift import lift

    return lift(program, info, req, sources, {v: k for k, v in entries.ids.items()})


class FabricEngine(base.Engine):
    """The switch or SmartNIC: a v1model P4 program, its P4Info and the policy as P4Runtime entries."""

    name, place, capability = "p4", "fabric", CAPABILITY
    options = frozenset({"range_match", "capacity"})

    @staticmethod
    def features(options: base.Options, unbounded: bool = False) -> Features:
        """The program's features for these options (unbounded: a table as large as needed)."""
        size = 1 << 30 if unbounded else (options.capacity or Features().acl_size)
        return Features(range_match=options.range_match, acl_size=size)

    def emit(self, program: Program, options: base.Options) -> base.Output:
        """`compile -t p4`."""
        return emit(program, self.features(options))

    def read_back(self, program: Program, options: base.Options) -> Program:
        """The entries read back from the WriteRequest."""
        return lifted(program, self.features(options, unbounded=True))

    def read_live(self, program: Program, grpc_addr: str = "", device_id: int = 1, range_match: bool = True,
                  **kw) -> Program:
        """What a running switch decides now: every entry of anyplane's tables read over P4Runtime (as a
        reader: no arbitration, nothing written) and lifted into IR as the WriteRequest's read-back is.
        An entry the policy would write names its rule; any other keeps its place and no rule."""
        import grpc

        from .client import Client, ClientError
        from .lift import LiftError, lift
        from .push import _check_pipeline, _key, current_state

        info, names, entries = build_all(program, Features(range_match=range_match))
        desired, sources = write_request(names, entries)
        label = {_key(u.entity): src for u, src in zip(desired.updates, sources)}
        try:
            client = Client(device_id, grpc_addr, arbitrate=False)
        except ClientError as exc:
            raise P4Error(str(exc)) from None
        try:
            _check_pipeline(info, client.p4info())
            state = current_state(client, names)
        except grpc.RpcError as exc:
            raise P4Error(f"the target at {grpc_addr} failed: {exc.code().name} {exc.details()}") from None
        finally:
            client.close()
        live = p4runtime_pb2.WriteRequest()
        held = []
        for e in state:
            if e.HasField("table_entry"):
                live.updates.add(type=p4runtime_pb2.Update.INSERT, entity=e)
                held.append(label.get(_key(e), ""))
        try:
            return lift(program, info, live, held, {v: k for k, v in entries.ids.items()})
        except LiftError as exc:
            raise P4Error(f"the switch at {grpc_addr} holds what anyplane never writes: {exc}") from None

    def holds(self, action) -> str | None:
        """A meter holds whole packets per second (within 10% of the rule's rate)."""
        if isinstance(action, RateLimit):
            try:
                meter_rate(action)
            except Unsupported as exc:
                return str(exc)
        return None

    def count(self, program: Program, options: base.Options) -> tuple[int, dict[str, str]]:
        """acl entries after range and redundancy work, and the rules the switch cannot express."""
        try:
            entries = build(program, self.features(options, unbounded=True))
        except Unsupported:
            return 0, {}
        return len(entries.acl), entries.unsupported

    def push(self, program: Program, grpc_addr: str, device_id: int = 1, range_match: bool = True,
             pipeline_config: tuple[str, str] | None = None, election_id: int = 1, dry_run: bool = False,
             session=None) -> dict:
        """Write the entries to a P4Runtime target as one batch of differences (backends/p4/push.py);
        `session` (push.Session) remembers the target between pushes."""
        from .push import push

        return push(program, grpc_addr, device_id, Features(range_match=range_match), pipeline_config,
                    (0, election_id), dry_run, session)

    def follow(self, grpc_addr: str, device_id: int = 1, election_id: int = 1, **kw) -> base.Follower:
        """Pushes through one primary session: after the first, the target is not read again, and a
        change of pods alone writes only the endpoint entries that changed (push.Session)."""
        from .push import Session

        session = Session(grpc_addr, device_id, (0, election_id))
        return base.Follower(lambda program, extra: self.push(program, grpc_addr, device_id, election_id=election_id,
                                                              session=session, **kw, **extra), session.close)


ENGINE = FabricEngine()
