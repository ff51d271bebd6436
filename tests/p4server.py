"""A P4Runtime gRPC server for the tests: it checks every write against the P4Info it was given.

Like p4runtime-shell's own test servicer, but strict, the way a switch agent
is: known table / field / action / parameter / meter IDs, match kinds as
declared, canonical bytestrings that fit the bit width, ternary
`value & mask == value` with a non-zero mask, LPM trailing bits zero, ranges
`low <= high` and not the whole space, don't-care fields omitted, priorities
non-zero exactly for ternary and range tables, no duplicate keys, table
capacity. Errors come back as P4Runtime wants them (gRPC UNKNOWN, one
p4.v1.Error per update in the status details), and batches honour
CONTINUE_ON_ERROR, ROLLBACK_ON_ERROR and DATAPLANE_ATOMIC.
"""

from __future__ import annotations

import copy
import threading
from concurrent import futures

import grpc
from google.protobuf import any_pb2

from anyplane.backends.p4.proto import code_pb2, p4info_pb2, p4runtime_pb2, p4runtime_pb2_grpc, status_pb2

MF = p4info_pb2.MatchField


class Invalid(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _int(data: bytes, bits: int, what: str) -> int:
    if not data:
        raise Invalid(code_pb2.INVALID_ARGUMENT, f"{what}: empty bytestring")
    if len(data) > 1 and data[0] == 0:
        raise Invalid(code_pb2.INVALID_ARGUMENT, f"{what}: bytestring is not canonical (leading zero byte)")
    value = int.from_bytes(data, "big")
    if value >> bits:
        raise Invalid(code_pb2.INVALID_ARGUMENT, f"{what}: value does not fit {bits} bits")
    return value


class Device:
    """The target's state: P4Info, entries per table, default actions, meter configs."""

    def __init__(self, p4info: p4info_pb2.P4Info | None = None, capacity: dict[str, int] | None = None):
        self.p4info = p4info
        self.capacity = capacity or {}
        self.tables: dict[int, dict[bytes, p4runtime_pb2.TableEntry]] = {}
        self.defaults: dict[int, p4runtime_pb2.TableEntry] = {}
        self.meters: dict[tuple[int, int], p4runtime_pb2.MeterEntry] = {}

    def default_entry(self, table_id: int) -> p4runtime_pb2.TableEntry | None:
        """The table's default entry: as written, else the program's initial default action."""
        if table_id in self.defaults:
            return self.defaults[table_id]
        for t in self.p4info.tables if self.p4info else ():
            if t.preamble.id == table_id and t.HasField("initial_default_action"):
                e = p4runtime_pb2.TableEntry(table_id=table_id, is_default_action=True)
                e.action.action.action_id = t.initial_default_action.action_id
                for a in t.initial_default_action.arguments:
                    e.action.action.params.add(param_id=a.param_id, value=a.value)
                return e
        return None

    def snapshot(self):
        # `apply` never changes a stored entry in place (it stores copies, or deletes): the dicts are enough.
        return {t: dict(rows) for t, rows in self.tables.items()}, dict(self.defaults), dict(self.meters)

    def restore(self, snap):
        self.tables, self.defaults, self.meters = snap

    # -- validation ---------------------------------------------------------------------------

    def _table(self, table_id: int) -> p4info_pb2.Table:
        for t in self.p4info.tables:
            if t.preamble.id == table_id:
                return t
        raise Invalid(code_pb2.NOT_FOUND, f"unknown table id {table_id}")

    def _action(self, table: p4info_pb2.Table, action: p4runtime_pb2.Action) -> None:
        if action.action_id not in {r.id for r in table.action_refs}:
            raise Invalid(code_pb2.INVALID_ARGUMENT, f"action {action.action_id} is not an action of "
                                                     f"{table.preamble.name}")
        spec = next(a for a in self.p4info.actions if a.preamble.id == action.action_id)
        params = {p.id: p for p in spec.params}
        seen = set()
        for p in action.params:
            if p.param_id not in params:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"unknown parameter {p.param_id} of {spec.preamble.name}")
            if p.param_id in seen:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"parameter {p.param_id} given twice")
            seen.add(p.param_id)
            _int(p.value, params[p.param_id].bitwidth, f"{spec.preamble.name}.{params[p.param_id].name}")
        if seen != set(params):
            raise Invalid(code_pb2.INVALID_ARGUMENT, f"{spec.preamble.name}: parameters missing")

    def _match(self, table: p4info_pb2.Table, entry: p4runtime_pb2.TableEntry) -> bytes:
        fields = {mf.id: mf for mf in table.match_fields}
        seen = set()
        for m in entry.match:
            mf = fields.get(m.field_id)
            if mf is None:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"unknown match field {m.field_id} in {table.preamble.name}")
            if m.field_id in seen:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"match field {mf.name} given twice")
            seen.add(m.field_id)
            kind = m.WhichOneof("field_match_type")
            expected = {MF.EXACT: "exact", MF.LPM: "lpm", MF.TERNARY: "ternary", MF.RANGE: "range"}[mf.match_type]
            if kind != expected:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name} is {expected}, got {kind}")
            bits = mf.bitwidth
            if kind == "ternary":
                value, mask = _int(m.ternary.value, bits, mf.name), _int(m.ternary.mask, bits, mf.name + " mask")
                if mask == 0:
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: don't-care must be omitted, not mask 0")
                if value & mask != value:
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: value & mask != value")
            elif kind == "lpm":
                value, plen = _int(m.lpm.value, bits, mf.name), m.lpm.prefix_len
                if not 0 < plen <= bits:
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: prefix length {plen} (0 must be omitted)")
                if value & ((1 << (bits - plen)) - 1):
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: bits beyond the prefix length are set")
            elif kind == "range":
                low, high = _int(m.range.low, bits, mf.name), _int(m.range.high, bits, mf.name)
                if low > high:
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: low > high")
                if low == 0 and high == (1 << bits) - 1:
                    raise Invalid(code_pb2.INVALID_ARGUMENT, f"{mf.name}: a full range is don't-care: omit it")
            else:
                _int(m.exact.value, bits, mf.name)
        for mf in table.match_fields:
            if mf.match_type == MF.EXACT and mf.id not in seen:
                raise Invalid(code_pb2.INVALID_ARGUMENT, f"exact field {mf.name} missing")
        needs_priority = any(mf.match_type in (MF.TERNARY, MF.RANGE) for mf in table.match_fields)
        if needs_priority and entry.priority <= 0:
            raise Invalid(code_pb2.INVALID_ARGUMENT, f"{table.preamble.name} needs a non-zero priority")
        if not needs_priority and entry.priority != 0:
            raise Invalid(code_pb2.INVALID_ARGUMENT, f"{table.preamble.name} takes no priority")
        key = p4runtime_pb2.TableEntry(table_id=entry.table_id, priority=entry.priority)
        key.match.extend(sorted(entry.match, key=lambda m: m.field_id))
        return key.SerializeToString(deterministic=True)

    def apply(self, update: p4runtime_pb2.Update) -> None:
        """Validate and apply one update (raise Invalid without changing anything)."""
        kind = update.entity.WhichOneof("entity")
        if kind == "meter_entry":
            me = update.entity.meter_entry
            meter = next((m for m in self.p4info.meters if m.preamble.id == me.meter_id), None)
            if meter is None:
                raise Invalid(code_pb2.NOT_FOUND, f"unknown meter id {me.meter_id}")
            if update.type != p4runtime_pb2.Update.MODIFY:
                raise Invalid(code_pb2.INVALID_ARGUMENT, "meter entries are only modified")
            if not 0 <= me.index.index < meter.size:
                raise Invalid(code_pb2.OUT_OF_RANGE, f"meter index {me.index.index} out of range")
            c = me.config
            if me.HasField("config") and (c.cir > c.pir or c.cburst <= 0 or c.pburst <= 0):
                raise Invalid(code_pb2.INVALID_ARGUMENT, "meter config: need cir <= pir and non-zero bursts")
            if me.HasField("config"):
                self.meters[(me.meter_id, me.index.index)] = copy.deepcopy(me)
            else:
                self.meters.pop((me.meter_id, me.index.index), None)
            return
        if kind != "table_entry":
            raise Invalid(code_pb2.UNIMPLEMENTED, f"{kind} is not supported by this target")
        entry = update.entity.table_entry
        table = self._table(entry.table_id)
        if entry.is_default_action:
            if update.type != p4runtime_pb2.Update.MODIFY or entry.match or entry.priority:
                raise Invalid(code_pb2.INVALID_ARGUMENT, "a default entry is only modified, without match or priority")
            self._action(table, entry.action.action)
            self.defaults[entry.table_id] = copy.deepcopy(entry)
            return
        key = self._match(table, entry)
        rows = self.tables.setdefault(entry.table_id, {})
        if update.type == p4runtime_pb2.Update.INSERT:
            if key in rows:
                raise Invalid(code_pb2.ALREADY_EXISTS, "an entry with this match and priority exists")
            limit = self.capacity.get(table.preamble.alias, table.size)
            if len(rows) >= limit:
                raise Invalid(code_pb2.RESOURCE_EXHAUSTED, f"{table.preamble.name} is full ({limit} entries)")
            self._action(table, entry.action.action)
            rows[key] = copy.deepcopy(entry)
        elif update.type == p4runtime_pb2.Update.MODIFY:
            if key not in rows:
                raise Invalid(code_pb2.NOT_FOUND, "no such entry to modify")
            self._action(table, entry.action.action)
            rows[key] = copy.deepcopy(entry)
        elif update.type == p4runtime_pb2.Update.DELETE:
            if key not in rows:
                raise Invalid(code_pb2.NOT_FOUND, "no such entry to delete")
            del rows[key]
        else:
            raise Invalid(code_pb2.INVALID_ARGUMENT, "unspecified update type")

    def entries(self, alias: str) -> list[p4runtime_pb2.TableEntry]:
        """What a table holds (for tests and the table-semantics evaluator)."""
        table = next(t for t in self.p4info.tables if t.preamble.alias == alias)
        return list(self.tables.get(table.preamble.id, {}).values())


class Servicer(p4runtime_pb2_grpc.P4RuntimeServicer):
    """One device behind a P4Runtime endpoint."""

    def __init__(self, device: Device, device_id: int = 1, atomic: bool = True):
        self.device, self.device_id, self.atomic = device, device_id, atomic
        self.lock = threading.Lock()
        self.writes: list[p4runtime_pb2.WriteRequest] = []
        self.reads = 0  # Read RPCs answered

    def _fail(self, context, results: list[tuple[int, str]]):
        status = status_pb2.Status(code=code_pb2.UNKNOWN, message="write failed")
        for code, message in results:
            detail = any_pb2.Any()
            detail.Pack(p4runtime_pb2.Error(canonical_code=code, message=message))
            status.details.append(detail)
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
        context.set_code(grpc.StatusCode.UNKNOWN)
        context.set_details("one or more updates failed")
        return p4runtime_pb2.WriteResponse()

    def Write(self, request, context):
        if request.device_id != self.device_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id}")
        if self.device.p4info is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no forwarding pipeline set")
        A = p4runtime_pb2.WriteRequest
        if request.atomicity in (A.ROLLBACK_ON_ERROR, A.DATAPLANE_ATOMIC) and not self.atomic:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this target only offers CONTINUE_ON_ERROR")
        with self.lock:
            self.writes.append(copy.deepcopy(request))
            snap = self.device.snapshot() if request.atomicity != A.CONTINUE_ON_ERROR else None
            results, failed = [], False
            for u in request.updates:
                try:
                    self.device.apply(u)
                    results.append((code_pb2.OK, ""))
                except Invalid as exc:
                    results.append((exc.code, str(exc)))
                    failed = True
            if failed:
                if snap is not None:
                    self.device.restore(snap)
                    results = [(code_pb2.ABORTED, "batch rolled back") if c == code_pb2.OK else (c, m)
                               for c, m in results]
                return self._fail(context, results)
        return p4runtime_pb2.WriteResponse()

    def Read(self, request, context):
        resp = p4runtime_pb2.ReadResponse()
        with self.lock:
            self.reads += 1
            for ent in request.entities:
                if ent.HasField("table_entry"):
                    tid = ent.table_entry.table_id
                    if ent.table_entry.is_default_action:  # only a read of the default itself returns it
                        default = self.device.default_entry(tid)
                        if default is not None:
                            resp.entities.add().table_entry.CopyFrom(default)
                        continue
                    tables = [tid] if tid else list(self.device.tables)
                    for t in tables:
                        for e in self.device.tables.get(t, {}).values():
                            resp.entities.add().table_entry.CopyFrom(e)
                elif ent.HasField("meter_entry"):
                    for (mid, _), me in sorted(self.device.meters.items()):
                        if mid == ent.meter_entry.meter_id:
                            resp.entities.add().meter_entry.CopyFrom(me)
        yield resp

    def SetForwardingPipelineConfig(self, request, context):
        with self.lock:
            self.device.p4info = copy.deepcopy(request.config.p4info)
            self.device.tables, self.device.defaults, self.device.meters = {}, {}, {}
        return p4runtime_pb2.SetForwardingPipelineConfigResponse()

    def GetForwardingPipelineConfig(self, request, context):
        resp = p4runtime_pb2.GetForwardingPipelineConfigResponse()
        if self.device.p4info is not None:
            resp.config.p4info.CopyFrom(self.device.p4info)
        return resp

    def StreamChannel(self, request_iterator, context):
        for req in request_iterator:
            if req.HasField("arbitration"):
                rep = p4runtime_pb2.StreamMessageResponse()
                rep.arbitration.CopyFrom(req.arbitration)
                rep.arbitration.status.code = code_pb2.OK
                yield rep

    def Capabilities(self, request, context):
        return p4runtime_pb2.CapabilitiesResponse(p4runtime_api_version="1.4.1")


class Server:
    """A running server on 127.0.0.1 (an ephemeral port, or `port`): `with Server(device) as s: s.addr`."""

    def __init__(self, device: Device, device_id: int = 1, atomic: bool = True, port: int = 0):
        self.servicer = Servicer(device, device_id, atomic)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        p4runtime_pb2_grpc.add_P4RuntimeServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.addr = f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(0)
