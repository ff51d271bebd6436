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

import grpc
from google.protobuf import text_format

from anyplane.ir.nodes import Program

from .client import Client, ClientError
from .engine import P4Error, build_all, write_request
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


def delta(current: list[p4runtime_pb2.Entity], desired: list[tuple[p4runtime_pb2.Update, str]]):
    """(updates, sources, inverse updates) taking the target from `current` to `desired`."""
    have = {_key(e): e for e in current}
    updates, sources, undo = [], [], []
    wanted = set()
    for u, src in desired:
        k = _key(u.entity)
        wanted.add(k)
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
    return updates, sources, undo


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
         dry_run: bool = False) -> dict:
    """Make the target hold exactly this policy's entries, or leave it as it was."""
    info, names, entries = build_all(program, features)
    desired_req, desired_sources = write_request(names, entries, device_id, election_id)
    if dry_run:
        return {"dry_run": True, "updates": len(desired_req.updates),
                "write_request": text_format.MessageToString(desired_req)}
    started = time.perf_counter()
    try:
        client = Client(device_id, grpc_addr, election_id)
    except ClientError as exc:
        raise P4Error(str(exc)) from None
    try:
        try:
            if pipeline_config is not None:
                client.set_pipeline(*pipeline_config)
            _check_pipeline(info, client.p4info())
            current = current_state(client, names)
        except grpc.RpcError as exc:
            raise P4Error(f"the target at {grpc_addr} failed: {exc.code().name} {exc.details()}") from None
        except OSError as exc:
            raise P4Error(f"cannot read the pipeline config: {exc}") from None
        updates, sources, undo = delta(current, list(zip(desired_req.updates, desired_sources)))
        if not updates:
            return {"dry_run": False, "updates": 0, "inserted": 0, "modified": 0, "deleted": 0,
                    "entries": len(entries.acl), "atomicity": None,
                    "seconds": round(time.perf_counter() - started, 3)}
        for atomicity in ATOMICITIES:
            req = p4runtime_pb2.WriteRequest(device_id=device_id, atomicity=atomicity)
            req.updates.extend(updates)
            try:
                _write(client, req)
                break
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
        kinds = [u.type for u in updates]
        return {"dry_run": False, "updates": len(updates),
                "inserted": kinds.count(p4runtime_pb2.Update.INSERT),
                "modified": kinds.count(p4runtime_pb2.Update.MODIFY),
                "deleted": kinds.count(p4runtime_pb2.Update.DELETE),
                "entries": len(entries.acl), "atomicity": p4runtime_pb2.WriteRequest.Atomicity.Name(atomicity),
                "seconds": round(time.perf_counter() - started, 3)}
    finally:
        client.close()
