"""Push a policy's entries to a running P4Runtime target, all or nothing.

    1. connect (client.py: stream, arbitration as primary)
    2. optionally set the forwarding pipeline (P4Info + device config)
    3. check the target's P4Info has our tables and actions with our IDs
    4. read what the target holds, and write the difference as ONE batch:
       DATAPLANE_ATOMIC if the target offers it, else ROLLBACK_ON_ERROR,
       else CONTINUE_ON_ERROR followed by undoing every update that landed
    5. a rejected update is reported with the policy rule it comes from
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import grpc
from google.protobuf import text_format

from anyplane.ir.addr import Prefix
from anyplane.ir.nodes import Program

from ..classes import endpoint_rows, rules_alike

from .client import Client, ClientError
from .engine import P4Error, build_all, check_endpoints, write_request
from .entries import endpoint_entries, fill_table_entry, identity_ids
from .pipeline import Features, Names
from .proto import code_pb2, p4runtime_pb2, status_pb2

ATOMICITIES = (p4runtime_pb2.WriteRequest.DATAPLANE_ATOMIC, p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR,
               p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR)


def _key(entity: p4runtime_pb2.Entity) -> bytes:
    """What identifies an entity on the target (everything but the action / config)."""
    e = p4runtime_pb2.Entity()
    e.CopyFrom(entity)
    if e.HasField("table_entry"):
        e.table_entry.ClearField("action")
        e.table_entry.ClearField("counter_data")
        e.table_entry.ClearField("meter_config")
        matches = sorted(e.table_entry.match, key=lambda m: m.field_id)
        del e.table_entry.match[:]
        e.table_entry.match.extend(matches)
    elif e.HasField("meter_entry"):
        e.meter_entry.ClearField("config")
        e.meter_entry.ClearField("counter_data")
    return e.SerializeToString(deterministic=True)


def _value(entity: p4runtime_pb2.Entity) -> bytes:
    if entity.HasField("table_entry"):
        return entity.table_entry.action.SerializeToString(deterministic=True)
    return entity.meter_entry.config.SerializeToString(deterministic=True)


def _check_pipeline(ours, theirs) -> None:
    have = {(t.preamble.name, t.preamble.id) for t in theirs.tables} | \
        {(a.preamble.name, a.preamble.id) for a in theirs.actions} | \
        {(m.preamble.name, m.preamble.id) for m in theirs.meters}
    need = {(t.preamble.name, t.preamble.id) for t in ours.tables} | \
        {(a.preamble.name, a.preamble.id) for a in ours.actions} | \
        {(m.preamble.name, m.preamble.id) for m in ours.meters}
    missing = sorted(name for name, _ in need - have)
    if missing:
        raise P4Error("the target runs a different P4 program (missing or renumbered: "
                      + ", ".join(missing[:5]) + "); push with --pipeline-config P4INFO,DEVICE_CONFIG")


def current_state(client, names: Names) -> list[p4runtime_pb2.Entity]:
    """Every entity the target holds in our tables, the acl default, and the meters."""
    out = []
    for table in names.info.tables:
        ent = p4runtime_pb2.Entity()
        ent.table_entry.table_id = table.preamble.id
        out.extend(e for e in client.read(ent) if not e.table_entry.is_default_action)
        # A whole-table read leaves the default entry out (P4Runtime 9.1.2): ask for it by itself, so
        # that an unchanged default is not written again and a rolled-back push restores it.
        ent.table_entry.is_default_action = True
        out.extend(client.read(ent))
    if names.meter is not None:
        ent = p4runtime_pb2.Entity()
        ent.meter_entry.meter_id = names.meter.preamble.id
        out.extend(e for e in client.read(ent) if e.meter_entry.HasField("config"))
    return out


def delta(current, desired: list[tuple[p4runtime_pb2.Update, str]]):
    """(updates, sources, inverse updates, what the target then holds) taking the target from `current`
    (its entities, or a {key: entity} of them) to `desired`."""
    have = current if isinstance(current, dict) else {_key(e): e for e in current}
    updates, sources, undo = [], [], []
    wanted: dict[bytes, p4runtime_pb2.Entity] = {}
    for u, src in desired:
        k = _key(u.entity)
        wanted[k] = u.entity
        old = have.get(k)
        if u.entity.HasField("table_entry") and u.entity.table_entry.is_default_action or \
                u.entity.HasField("meter_entry"):
            if old is not None and _value(old) == _value(u.entity):
                continue
            new = p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=u.entity)
            back = p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=old) if old is not None else None
        elif old is None:
            new = u
            back = p4runtime_pb2.Update(type=p4runtime_pb2.Update.DELETE, entity=u.entity)
        elif _value(old) != _value(u.entity):
            new = p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=u.entity)
            back = p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=old)
        else:
            continue
        updates.append(new)
        sources.append(src)
        undo.append(back)
    for k, old in have.items():
        if k in wanted:
            continue
        if old.HasField("table_entry") and old.table_entry.is_default_action:
            continue
        if old.HasField("meter_entry"):
            reset = p4runtime_pb2.Entity()
            reset.meter_entry.CopyFrom(old.meter_entry)
            reset.meter_entry.ClearField("config")
            updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=reset))
            undo.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=old))
        else:
            updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.DELETE, entity=old))
            undo.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT, entity=old))
        sources.append("(entry no longer in the policy)")
    after = {k: e for k, e in have.items() if k in wanted or (e.HasField("table_entry") and
                                                             e.table_entry.is_default_action)}
    after.update(wanted)
    return updates, sources, undo, after


def _endpoint_delta(names: Names, held: dict, ids: dict, old: set, new: set):
    """(updates, sources, inverse updates) taking the endpoint tables (the switch's ipcache) from the
    endpoint rows `old` to `new` ((family, value, length, identity) each), when only the binding changed;
    `held`: what the target holds."""
    def entities(rows) -> list[tuple[p4runtime_pb2.Entity, str]]:
        out = []
        for e in endpoint_entries([(Prefix(f, v, n), who) for f, v, n, who in sorted(rows)], ids):
            ent = p4runtime_pb2.Entity()
            fill_table_entry(ent.table_entry, names, e)
            out.append((ent, e.location))
        return out
    gone = {_key(ent): ent for ent, _ in entities(old - new)}
    came = entities(new - old)
    updates, sources, undo = [], [], []
    for ent, where in came:
        k = _key(ent)
        was = gone.pop(k, None)
        if was is None:
            updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT, entity=ent))
            undo.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.DELETE, entity=ent))
        else:  # a prefix given to another identity
            updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=ent))
            undo.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.MODIFY, entity=held.get(k, was)))
        sources.append(where)
    for k, ent in gone.items():
        ent = held.get(k, ent)
        updates.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.DELETE, entity=ent))
        undo.append(p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT, entity=ent))
        sources.append("(entry no longer in the policy)")
    return updates, sources, undo


class Session:
    """A primary connection to one target that remembers what the target holds, for a process that
    pushes again and again (`push --watch`). Its first push reads every table, as a push without a
    session does; later ones work out their delta against that memory, which the session's own writes
    keep true: while it is primary, no other controller may write (P4Runtime §5). When the stream ends
    or another controller becomes primary, or a push fails, the memory is dropped and the next push
    connects and reads again. A push that changes only the binding keeps the ACL it built the last time
    and writes just the endpoint entries that changed."""

    def __init__(self, grpc_addr: str, device_id: int = 1, election_id: tuple[int, int] = (0, 1)):
        self.addr, self.device_id, self.election_id = grpc_addr, device_id, election_id
        self.client: Client | None = None
        self.held: dict | None = None  # {key: entity} as the target holds them
        # (features, program, its entries but the endpoint ones, its endpoint rows, the P4Info's names) of
        # the last push that landed
        self.last: tuple | None = None

    def ready(self) -> bool:
        """Whether the memory can be trusted: connected, still primary, read at least once."""
        if self.client is not None and not self.client.primary():
            self.reset()
        return self.client is not None and self.held is not None

    def reset(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client, self.held, self.last = None, None, None

    close = reset


class Rejected(Exception):
    """The target refused some updates of a batch: [(index, p4.v1.Error)]."""

    def __init__(self, errors):
        super().__init__(f"{len(errors)} updates rejected")
        self.errors = errors


def _write(client: Client, req: p4runtime_pb2.WriteRequest) -> None:
    """One Write RPC, with P4Runtime's per-update error details decoded (an update of a batch that
    succeeded has a detail that says OK)."""
    try:
        client.write(req)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNKNOWN:
            raise
        status = None
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
        if status is None:
            raise
        errors = []
        for idx, detail in enumerate(status.details):
            err = p4runtime_pb2.Error()
            if detail.Unpack(err) and err.canonical_code != code_pb2.OK:
                errors.append((idx, err))
        raise Rejected(errors) from None


def _describe(errors, sources) -> str:
    # Updates that only failed because a sibling did (ABORTED) say nothing about the cause.
    errors = [e for e in errors if e[1].canonical_code != code_pb2.ABORTED] or errors
    parts = []
    for idx, err in errors[:5]:
        code = code_pb2._CODE.values_by_number[err.canonical_code].name
        parts.append(f"update {idx} from {sources[idx] if idx < len(sources) else '?'}: {code} {err.message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def push(program: Program, grpc_addr: str, device_id: int = 1, features: Features = Features(),
         pipeline_config: tuple[str, str] | None = None, election_id: tuple[int, int] = (0, 1),
         dry_run: bool = False, session: Session | None = None) -> dict:
    """Make the target hold exactly this policy's entries, or leave it as it was. `session`: a Session
    for this target, kept between pushes (its memory stands for reading the target, and a push that
    changes only the binding writes the endpoint entries that changed, without building the ACL)."""
    started = time.perf_counter()
    if session is not None and (pipeline_config is not None or
                                (session.addr, session.device_id, session.election_id) != (grpc_addr, device_id, election_id)):
        session.reset()
    remembered = session is not None and not dry_run and session.ready()
    rows = None
    if remembered and session.last is not None and session.last[0] == features:
        _, before, kept, before_rows, names = session.last
        if rules_alike(before, program) and identity_ids(program) == kept.ids:
            rows = endpoint_rows(program)
            families = Counter(f for f, *_ in rows)
            check_endpoints(Counter({f"{side}_endpoint_v{f}": n for f, n in families.items() for side in ("src", "dst")}),
                            features)
            info, entries = None, kept
    if rows is None:
        info, names, entries = build_all(program, features)
        kept = replace(entries, endpoints=[])
    if dry_run:
        desired_req, _ = write_request(names, entries, device_id, election_id)
        return {"dry_run": True, "updates": len(desired_req.updates),
                "write_request": text_format.MessageToString(desired_req)}
    if remembered:
        client = session.client
    else:
        try:
            client = Client(device_id, grpc_addr, election_id)
        except ClientError as exc:
            raise P4Error(str(exc)) from None
    landed = False
    try:
        if remembered:
            current = session.held
        else:
            try:
                if pipeline_config is not None:
                    client.set_pipeline(*pipeline_config)
                _check_pipeline(info, client.p4info())
                current = current_state(client, names)
            except grpc.RpcError as exc:
                raise P4Error(f"the target at {grpc_addr} failed: {exc.code().name} {exc.details()}") from None
            except OSError as exc:
                raise P4Error(f"cannot read the pipeline config: {exc}") from None
        after = None
        if rows is not None:  # only the binding changed: the endpoint entries that differ
            updates, sources, undo = _endpoint_delta(names, current, kept.ids, before_rows, rows)
        else:
            desired_req, desired_sources = write_request(names, entries, device_id, election_id)
            updates, sources, undo, after = delta(current, list(zip(desired_req.updates, desired_sources)))
        atomicity = _write_all(client, device_id, grpc_addr, updates, sources, undo) if updates else None
        if session is not None:
            if after is None:  # the memory follows the updates that landed
                held = session.held
                for u in updates:
                    if u.type == p4runtime_pb2.Update.DELETE:
                        held.pop(_key(u.entity), None)
                    else:
                        held[_key(u.entity)] = u.entity
            else:
                session.held = after
            session.client = client
            session.last = (features, program, kept, rows if rows is not None else endpoint_rows(program), names)
        landed = True
        kinds = [u.type for u in updates]
        return {"dry_run": False, "updates": len(updates),
                "inserted": kinds.count(p4runtime_pb2.Update.INSERT),
                "modified": kinds.count(p4runtime_pb2.Update.MODIFY),
                "deleted": kinds.count(p4runtime_pb2.Update.DELETE),
                "entries": len(entries.acl),
                "atomicity": p4runtime_pb2.WriteRequest.Atomicity.Name(atomicity) if atomicity is not None else None,
                "endpoints_only": rows is not None, "seconds": round(time.perf_counter() - started, 4)}
    finally:
        if session is None:
            client.close()
        elif not landed:
            if client is not session.client:
                client.close()
            session.reset()


def _write_all(client: Client, device_id: int, grpc_addr: str, updates, sources, undo) -> int:
    """Write the updates as one batch, as atomically as the target offers; the atomicity used. A
    rejected batch is undone (P4Error says what the target then holds)."""
    for atomicity in ATOMICITIES:
        req = p4runtime_pb2.WriteRequest(device_id=device_id, atomicity=atomicity)
        req.updates.extend(updates)
        try:
            _write(client, req)
            return atomicity
        except Rejected as exc:
            detail = _describe(exc.errors, sources)
            if atomicity != p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR:
                raise P4Error(f"the target rejected the write ({detail}); it rolled the batch back "
                              "and keeps the previous entries") from None
            failed = {idx for idx, _ in exc.errors}
            back = [u for k, u in enumerate(undo) if k not in failed and u is not None]
            if back:
                revert = p4runtime_pb2.WriteRequest(device_id=device_id, atomicity=atomicity)
                revert.updates.extend(reversed(back))
                try:
                    _write(client, revert)
                except Rejected as again:
                    raise P4Error(f"the target rejected the write ({detail}) and then rejected the "
                                  f"rollback ({_describe(again.errors, [])}): its entries are MIXED") from None
            raise P4Error(f"the target rejected the write ({detail}); the {len(back)} updates that had "
                          "landed were undone: it keeps the previous entries") from None
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise P4Error(f"the target at {grpc_addr} failed: {exc.code().name} {exc.details()}") from None
    raise P4Error(f"the target at {grpc_addr} offers no atomicity of writes this client knows")
