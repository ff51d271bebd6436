"""Load, pin, fill and switch the XDP classifier's maps.

    /sys/fs/bpf/anyplane/<name>/prog        the program (never reloaded for a policy change)
    /sys/fs/bpf/anyplane/<name>/maps/<m>    its maps; each holds two generations
    <state dir>/<name>.json                 layout, live generation, counter labels

A push writes every table of the new policy into the idle generation's
region of each map, zeroes that region's counters, then flips `gen`: one
4-byte write, so a packet sees either the old policy or the new one, never a
mix. Anything that fails before the flip leaves the old policy in force.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anyplane.ir.actions import RateLimit
from anyplane.ir.nodes import Connections

from ..base import EngineError
from . import bpfsys as B
from .addr4 import ELEMENT, LEVEL1, build_addr4
from .emit import Layout
from .model import Model

PIN_ROOT = Path(os.environ.get("ANYPLANE_BPFFS", "/sys/fs/bpf")) / "anyplane"
STATE_ROOT = Path(os.environ.get("ANYPLANE_STATE_DIR", "/run/anyplane")) / "ebpf"
SLOT_REUSE_MS = 50  # a region is rewritten only this long after it stopped being live
COUNTER = struct.Struct("=QQQ")
CT_KEY = struct.Struct("=BBHHH16s16s")   # struct ct_key: family, proto, sport, dport, pad, src, dst
CT_VAL = struct.Struct("=QIIIIII")       # struct ct_val: last (ns), epoch, rule, bucket, icmp, state, pad
CT_STATES = ("opening", "established", "closing")
CT_STATS = ("opened", "replies", "related", "cut")
TC_PREF = "49152"  # the tc filter priority anyplane's egress program takes
XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2
VERDICTS = {XDP_DROP: "drop", XDP_PASS: "pass", XDP_ABORTED: "aborted"}


class LoadError(EngineError):
    """The kernel refused something (the message says what; the old policy stays in force)."""


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LoadError(f"{' '.join(cmd[:3])} failed: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def _in_netns(netns: str | None) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{netns}"] if netns else []


@dataclass
class Tables:
    """The serialised contents of one policy generation."""

    addr4: array
    addr6: list[tuple[bytes, int]]
    cls: array
    row: bytes   # every field's rows (struct row): summary and block ids
    blk: bytes   # the block pool (struct block)
    act: bytes
    tb: bytes
    meta: bytes
    labels: list[str]
    need: Layout
    l4t: array = field(default_factory=lambda: array("I"))  # the combined field's tables (model.L4Classes)
    _image: dict | None = field(default=None, init=False, repr=False, compare=False)  # not carried by replace()

    def image(self) -> dict[str, bytes]:
        """The bytes of each region but `meta` (and the counters' labels), made once per policy: a push
        compares them with what the idle generation holds."""
        if self._image is None:
            self._image = {"addr4": self.addr4.tobytes(), "cls": self.cls.tobytes(), "row": self.row,
                           "blk": self.blk, "l4t": self.l4t.tobytes(), "act": self.act, "tb": self.tb,
                           "labels": json.dumps(self.labels, separators=(",", ":")).encode()}
        return self._image


def bucket(rl: RateLimit) -> tuple[int, int, int, int, int]:
    """A full bucket as the program keeps it (tokens, last refill, count, period, burst): the rate in
    lowest terms, `count` units per microsecond, `period` units per token (xdp.c.j2, take_token)."""
    g = math.gcd(rl.count, rl.per_s * 10**6)
    count, period = rl.count // g, rl.per_s * 10**6 // g
    return rl.burst * period, 0, count, period, rl.burst


INLINE_BYTES = 32 << 20

#: struct meta (xdp.c.j2): table bases, default, entries, connection state, policy epoch, timeouts, and
#: the combined field's table offsets and sizes.
META = struct.Struct("=22I")
EPOCH_AT = 11  # index of `epoch` in META: set by `write`, one more at every push


def trie_key(side: int, p) -> bytes:
    """An IPv6 prefix's key in the `addr6` trie: the LPM length (8 bits of side, then the prefix), the side
    (0 source, 1 destination), the address."""
    return struct.pack("=I", 8 + p.length) + bytes([side]) + p.value.to_bytes(16, "big")


def tables(model: Model, labels: dict[str, str], connections: Connections = Connections()) -> Tables:
    """Map contents for a model; `labels` names rules for `status`; `connections`: the policy's
    connection state (stateful or not, timeouts, table size)."""
    cap = model.capacity
    addr4 = build_addr4([[pc for pc in model.src.prefixes if pc[0].family == 4],
                         [pc for pc in model.dst.prefixes if pc[0].family == 4]]).data
    addr6 = []
    for side, classes in enumerate((model.src, model.dst)):
        for p, cls in classes.prefixes:
            if p.family == 6:
                addr6.append((trie_key(side, p), cls))
    cls_arr = array("I", bytes(4 * 3 * 65536))
    for base, fc in ((0, model.sport), (65536, model.dport), (2 * 65536, model.icmp)):
        starts = list(fc.starts) + [65536]
        for k in range(len(fc.starts)):
            cls_arr[base + starts[k]:base + starts[k + 1]] = array("I", [k + 1]) * (starts[k + 1] - starts[k])
    bases, rows, bits = {}, [], model.bits
    names = model.fields
    # Rows hold their words while every row in full fits INLINE_BYTES (one load less per block a packet
    # visits); beyond, they name blocks in the pool.
    pooled = sum(bits.row_count(name) for name in names) * cap // 8 > INLINE_BYTES
    for name in names:
        bases[name] = len(rows)
        rows += [bits.row_value(name, r, pooled) for r in range(bits.row_count(name))]
    blk = [bits.block_value(content) for content in bits.pool] if pooled else []
    act = b"".join(struct.pack("=IIII", verdict, slot, bucket, 0) for verdict, slot, bucket in model.actions)
    tb = b"".join(struct.pack("=QQQQQ", *bucket(rl)) for rl in model.buckets)
    c = connections
    l4 = model.l4
    # Combined, the protocol's base is the combined field's; its tables follow in the l4t region.
    l4t = array("I", l4.proto + l4.first + l4.second) if l4 is not None else array("I")
    combined = (256 + len(l4.first), l4.sports, l4.dports + l4.icmps, l4.dports) if l4 is not None else (0, 0, 0, 0)
    meta = META.pack(bases["src"], bases["dst"], bases.get("l4", bases.get("proto", 0)), bases.get("sport", 0),
                     bases.get("dport", 0), bases.get("icmp", 0), model.default_verdict, cap, len(model.entries), 0,
                     int(c.stateful), 0, c.tcp_s, c.tcp_opening_s, c.tcp_closing_s, c.udp_s, c.icmp_s, c.other_s,
                     *combined)
    need = Layout(cap, len(rows), (len(addr4) - 2 * LEVEL1) // ELEMENT, len(addr6), len(model.buckets), c.max,
                  len(blk), len(l4t))
    return Tables(addr4, addr6, cls_arr, b"".join(rows), b"".join(blk), act, tb, meta,
                  [labels.get(r, r) for r in model.rules], need, l4t)


class Classifier:
    """One pinned XDP classifier instance."""

    def __init__(self, name: str = "default"):
        self.name = name
        self.root = PIN_ROOT / name
        self.state_path = STATE_ROOT / f"{name}.json"
        # The cached regions this process read or wrote, with their files' identity (inode, size, mtime):
        # kept while the file is unchanged, so that a process pushing many times reads each file once.
        self._kept: dict[Path, tuple[tuple, bytes]] = {}

    # -- state -----------------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        """Whether a program is pinned under this name."""
        return self.prog_path.exists() and self.state_path.exists()

    @property
    def prog_path(self) -> Path:
        """The pinned XDP program (ingress)."""
        return self.root / "progs" / "anyplane_xdp"

    @property
    def egress_path(self) -> Path:
        """The pinned tc program (egress), which shares every map with the XDP program."""
        return self.root / "progs" / "anyplane_tc"

    def state(self) -> dict:
        """Layout, live generation and labels (empty when not installed)."""
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def layout(self) -> Layout:
        """The sizes the loaded program was built for."""
        return Layout(**self.state()["layout"])

    def _save(self, state: dict) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, separators=(",", ":")))
        os.replace(tmp, self.state_path)

    # -- program ---------------------------------------------------------------------------
    def install(self, obj: bytes, layout: Layout) -> dict:
        """Load and pin a program (replacing a pinned one of the same name). The connections of the
        program it replaces stay: its connection table is reused when it has the same size, else its
        entries are copied (the most recently used first, as many as fit). Returns
        `{"connections_kept": N}`."""
        bpffs = PIN_ROOT.parent
        if not bpffs.is_dir() or not os.path.ismount(bpffs):
            raise LoadError(f"bpffs is not mounted at {bpffs} (mount -t bpf bpf {bpffs})")
        old_ct = self._take_ct()
        self.remove()
        self.root.mkdir(parents=True, exist_ok=True)
        obj_path = self.state_path.with_suffix(".o")
        obj_path.parent.mkdir(parents=True, exist_ok=True)
        obj_path.write_bytes(obj)
        reuse = old_ct is not None and old_ct[1] == layout.connections
        try:
            _run(["bpftool", "prog", "loadall", str(obj_path), str(self.root / "progs")]
                 + (["map", "name", "ct", "pinned", str(old_ct[0])] if reuse else [])
                 + ["pinmaps", str(self.root / "maps")])
            kept = self._copy_ct(old_ct[0], layout.connections) if old_ct is not None and not reuse else 0
        except LoadError:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        finally:
            if old_ct is not None:
                old_ct[0].unlink(missing_ok=True)
        self._save({"layout": asdict(layout), "gen": 0, "flipped_ns": 0, "addr6": {}})
        return {"connections_kept": self._ct_count() if reuse else kept}

    def _take_ct(self) -> tuple[Path, int] | None:
        """Pin the loaded program's connection table aside, with its size (None when there is none)."""
        pin = self.root / "maps" / "ct"
        if not pin.exists():
            return None
        aside = PIN_ROOT / f"{self.name}@ct"  # bpffs refuses names with a dot
        aside.unlink(missing_ok=True)
        fd = B.obj_get(str(pin))
        try:
            B.obj_pin(fd, str(aside))
        finally:
            os.close(fd)
        return aside, self.state().get("layout", {}).get("connections", 0)

    def _copy_ct(self, old: Path, room: int) -> int:
        """Copy connections from an old table of another size into the new one."""
        src, dst = B.obj_get(str(old)), self._map("ct")
        copied = 0
        try:
            entries = []
            for key in B.map_keys(src, CT_KEY.size):
                raw = B.map_lookup(src, key, CT_VAL.size)
                if raw is not None:
                    entries.append((CT_VAL.unpack(raw)[0], key, raw))
            entries.sort(reverse=True)
            for _, key, raw in entries[:room]:
                B.map_update(dst, key, raw)
                copied += 1
        finally:
            os.close(src)
            os.close(dst)
        return copied

    def _ct_count(self) -> int:
        fd = self._map("ct")
        try:
            return sum(1 for _ in B.map_keys(fd, CT_KEY.size))
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Unpin everything (detach from interfaces first)."""
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        for p in [self.state_path, self.state_path.with_suffix(".o")] + list(
                self.state_path.parent.glob(f"{self.name}.gen[01].*")):
            p.unlink(missing_ok=True)

    def prog_fd(self, egress: bool = False) -> int:
        """An fd of the pinned XDP program, or of the tc egress program (caller closes it)."""
        return B.obj_get(str(self.egress_path if egress else self.prog_path))

    def attach(self, iface: str, netns: str | None = None, egress: bool = True) -> None:
        """Attach to an interface: XDP at ingress (native mode where the driver has it, else generic),
        and with `egress` the tc program at egress, so that connections the host opens are known.
        Each replaces what anyplane attached before, in one step.

        For an interface in a named network namespace, only the network namespace is
        entered (nsenter), so that bpffs stays visible.
        """
        ns = _in_netns(netns)
        _run(ns + ["ip", "-force", "link", "set", "dev", iface, "xdp", "pinned", str(self.prog_path)])
        if egress:
            subprocess.run(ns + ["tc", "qdisc", "add", "dev", iface, "clsact"], capture_output=True)
            _run(ns + ["tc", "filter", "replace", "dev", iface, "egress", "pref", TC_PREF, "handle", "1",
                       "bpf", "direct-action", "object-pinned", str(self.egress_path)])
        else:
            self.detach_egress(iface, netns)

    @staticmethod
    def detach_egress(iface: str, netns: str | None = None) -> None:
        """Remove anyplane's tc program from an interface's egress."""
        subprocess.run(_in_netns(netns) + ["tc", "filter", "del", "dev", iface, "egress", "pref", TC_PREF],
                       capture_output=True)

    @staticmethod
    def detach(iface: str, netns: str | None = None) -> None:
        """Remove whatever XDP program an interface runs, and anyplane's egress program."""
        subprocess.run(_in_netns(netns) + ["ip", "link", "set", "dev", iface, "xdp", "off"], capture_output=True)
        Classifier.detach_egress(iface, netns)

    # -- policy generations -----------------------------------------------------------------
    def _map(self, name: str) -> int:
        return B.obj_get(str(self.root / "maps" / name))

    def live_gen(self) -> int:
        """The generation packets use now."""
        fd = self._map("gen")
        try:
            return struct.unpack("=I", B.map_lookup(fd, b"\0\0\0\0", 4))[0] & 1
        finally:
            os.close(fd)

    def write(self, t: Tables) -> int:
        """Fill the idle generation with `t` and make it live; returns the new generation."""
        state = self.state()
        layout = Layout(**state["layout"])
        if not layout.fits(t.need):
            raise LoadError(f"the policy needs {t.need} but the loaded program was built for {layout}: "
                            "push reloads the program in that case")
        started = time.perf_counter()
        idle = 1 - self.live_gen()
        wait = SLOT_REUSE_MS / 1000 - (time.time_ns() - state.get("flipped_ns", 0)) / 1e9
        if wait > 0:
            time.sleep(wait)
            started += wait
        elements4 = (2 * LEVEL1) // ELEMENT + layout.chunks
        ncpu = B.possible_cpus()
        image = dict(t.image(), meta=_with_epoch(t.meta, state.get("epoch", 0) + 1))
        regions = {  # map -> (value size, first key of the idle region)
            "addr4": (4 * ELEMENT, idle * elements4), "cls": (4, idle * 3 * 65536),
            "row": (layout.row_size, idle * layout.rows), "blk": (layout.block_size, idle * layout.blocks),
            "l4t": (4, idle * layout.l4t), "act": (16, idle * layout.capacity), "tb": (40, idle * layout.buckets),
            "meta": (META.size, idle),
        }
        previous = self._read_cache(idle)
        changed = [name for name, data in image.items() if previous.get(name) != data]
        written = 0
        try:
            for name in changed:
                if name in regions:
                    self._forget_cache(idle, name)  # the region is about to change
                    size, base = regions[name]
                    written += self._fill(name, size, base, image[name], previous.get(name))
            self._trie(idle, state.get("addr6", {}).get(str(idle), []), t.addr6)
        except (B.BpfError, OSError) as exc:
            raise LoadError(f"could not write the new policy ({exc}); the previous policy stays in force") from exc
        self.last_write = {"entries_written": written}
        gen_fd = self._map("gen")
        try:
            B.map_update(gen_fd, b"\0\0\0\0", struct.pack("=I", idle))
        finally:
            os.close(gen_fd)
        self.last_write["seconds_to_live"] = time.perf_counter() - started
        # What the generation holds now, for the next push's comparison (after the flip: a process that
        # stops before this leaves no cache for it, and the next push writes the region whole).
        self._write_cache(idle, {name: image[name] for name in changed})
        state.update(gen=idle, flipped_ns=time.time_ns(), epoch=state.get("epoch", 0) + 1)
        state.setdefault("addr6", {})[str(idle)] = [k.hex() for k, _ in t.addr6]
        self._save(state)
        # The demoted generation's counters are cleared now, after the flip, so that they
        # start from zero when that region next becomes live (activation does not wait for it).
        demoted = 1 - idle
        self._fill("cnt", COUNTER.size * ncpu, demoted * (layout.capacity + 1),
                   bytes(COUNTER.size * ncpu * (layout.capacity + 1)))
        return idle

    def _fill(self, name: str, value_size: int, base: int, values: bytes, previous: bytes | None = None) -> int:
        """Write a region; with the region's previous contents, only the elements that changed.

        Returns how many elements were written.
        """
        n = len(values) // value_size if value_size else 0
        if previous is not None:  # of another length: what lies past the shorter one is written whole
            runs = _changed(previous, values, value_size)
        else:
            runs = [(0, n)] if n else []
        fd = self._map(name)
        written = 0
        try:
            chunk = max(1, (1 << 20) // value_size)
            for first, end in runs:
                for start in range(first, end, chunk):
                    stop = min(end, start + chunk)
                    B.map_update_batch(fd, array("I", range(base + start, base + stop)).tobytes(),
                                       values[start * value_size:stop * value_size], stop - start)
                written += end - first
        finally:
            os.close(fd)
        return written

    # -- cached region contents: what each generation's regions hold, so a push writes only changes ---
    def _cache_path(self, gen: int, region: str) -> Path:
        return self.state_path.with_name(f"{self.name}.gen{gen}.{region}")

    def _read_cache(self, gen: int) -> dict[str, bytes]:
        out = {}
        for region in ("addr4", "cls", "row", "blk", "l4t", "act", "tb", "meta", "labels"):
            path = self._cache_path(gen, region)
            try:
                st = path.stat()
            except OSError:
                continue
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            kept = self._kept.get(path)
            if kept is None or kept[0] != seen:
                try:
                    kept = self._kept[path] = (seen, path.read_bytes())
                except OSError:
                    continue
            out[region] = kept[1]
        return out

    def _forget_cache(self, gen: int, region: str) -> None:
        path = self._cache_path(gen, region)
        self._kept.pop(path, None)
        path.unlink(missing_ok=True)

    def _write_cache(self, gen: int, regions: dict[str, bytes]) -> None:
        for region, data in regions.items():
            path = self._cache_path(gen, region)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            st = path.stat()
            self._kept[path] = ((st.st_ino, st.st_size, st.st_mtime_ns), data)

    def _trie(self, gen: int, old: list[str], new: list[tuple[bytes, int]]) -> None:
        fd = self._map(f"addr6_{gen}")
        try:
            keep = {k for k, _ in new}
            for hexkey in old:
                key = bytes.fromhex(hexkey)
                if key not in keep:
                    B.map_delete(fd, key)
            for key, cls in new:
                B.map_update(fd, key, struct.pack("=I", cls))
        finally:
            os.close(fd)

    # -- counters ----------------------------------------------------------------------------
    def counters(self) -> list[dict]:
        """Packets, bytes and rate-limited drops per rule of the live policy (summed over CPUs)."""
        state = self.state()
        gen = self.live_gen()
        labels = json.loads(self._read_cache(gen).get("labels", b"[]"))
        cap = state["layout"]["capacity"]
        fd = self._map("cnt")
        ncpu = B.possible_cpus()
        rows = []
        try:
            for slot, label in list(enumerate(labels)) + [(cap, "default")]:
                key = struct.pack("=I", gen * (cap + 1) + slot)
                raw = B.map_lookup(fd, key, COUNTER.size * ncpu) or b""
                totals = [0, 0, 0]
                for c in range(ncpu):
                    for i, v in enumerate(COUNTER.unpack_from(raw, c * COUNTER.size)):
                        totals[i] += v
                rows.append({"rule": label, "packets": totals[0], "bytes": totals[1], "rate_limited": totals[2]})
        finally:
            os.close(fd)
        return rows


    def connections(self) -> dict:
        """The connection table: entries held (by protocol and TCP state; idle past their timeout and
        waiting to be reused), its size, and what the program counted (opened, replies, related, cut)."""
        layout = self.layout
        meta = META.unpack(self._meta(self.live_gen()))
        stateful, timeouts = meta[EPOCH_AT - 1], dict(zip(("tcp", "opening", "closing", "udp", "icmp", "other"),
                                                          meta[EPOCH_AT + 1:]))
        now = time.monotonic_ns()
        held, idle, by_proto, by_state = 0, 0, {}, {}
        fd = self._map("ct")
        try:
            for key in B.map_keys(fd, CT_KEY.size):
                raw = B.map_lookup(fd, key, CT_VAL.size)
                if raw is None:
                    continue
                _, proto, *_ = CT_KEY.unpack(key)
                last, _, _, _, _, state, _ = CT_VAL.unpack(raw)
                name = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(proto, "other")
                limit = timeouts["tcp" if state == 1 else CT_STATES[state]] if name == "tcp" else timeouts[name]
                if (now - last) / 1e9 > limit:
                    idle += 1
                    continue
                held += 1
                by_proto[name] = by_proto.get(name, 0) + 1
                if name == "tcp":
                    by_state[CT_STATES[state]] = by_state.get(CT_STATES[state], 0) + 1
        finally:
            os.close(fd)
        ncpu = B.possible_cpus()
        fd = self._map("ctstat")
        try:
            counted = {}
            for i, label in enumerate(CT_STATS):
                raw = B.map_lookup(fd, struct.pack("=I", i), 8 * ncpu) or bytes(8 * ncpu)
                counted[label] = sum(struct.unpack(f"={ncpu}Q", raw))
        finally:
            os.close(fd)
        return {"stateful": bool(stateful), "held": held, "expired": idle, "max": layout.connections,
                "bytes_per_entry": CT_KEY.size + CT_VAL.size, "by_protocol": by_proto, "tcp_states": by_state,
                "timeouts_s": timeouts, "counted": counted}

    def map_bytes(self) -> int:
        """The memory the kernel accounts to the program's maps (bytes_memlock, summed)."""
        info = json.loads(_run(["bpftool", "-j", "prog", "show", "pinned", str(self.prog_path)]))
        total = 0
        for map_id in info.get("map_ids", []):
            total += int(json.loads(_run(["bpftool", "-j", "map", "show", "id", str(map_id)])).get("bytes_memlock", 0))
        return total

    def image(self, gen: int | None = None) -> tuple[dict[str, bytes], list[tuple[bytes, int]]]:
        """What one generation of the maps holds (the live one by default), read from the kernel: the
        regions decode.py reads back, and the IPv6 trie's keys with their classes. The counters' labels
        are the ones this host wrote with the policy (they are not in the maps)."""
        gen = self.live_gen() if gen is None else gen
        layout = self.layout
        meta = self._meta(gen)
        values = META.unpack(meta)
        if values[7] != layout.capacity:
            raise LoadError(f"generation {gen} holds tables for {values[7]} entries, the program {layout.capacity}")
        elements4 = (2 * LEVEL1) // ELEMENT + layout.chunks
        regions = {"addr4": (4 * ELEMENT, elements4), "cls": (4, 3 * 65536), "row": (layout.row_size, layout.rows),
                   "blk": (layout.block_size, max(0, layout.blocks)), "l4t": (4, layout.l4t),
                   "act": (16, values[8]), "tb": (40, layout.buckets)}
        out = {"meta": meta}
        labels = self._read_cache(gen).get("labels")
        if labels is not None:  # written by this host's anyplane beside the maps; else rules go unnamed
            out["labels"] = labels
        for name, (size, count) in regions.items():
            fd = self._map(name)
            try:
                out[name] = B.map_lookup_batch(fd, gen * (layout.capacity if name == "act" else count), count, size) \
                    if count else b""
            finally:
                os.close(fd)
        fd = self._map(f"addr6_{gen}")
        try:
            addr6 = [(key, struct.unpack("=I", B.map_lookup(fd, key, 4))[0]) for key in B.map_keys(fd, 21)]
        finally:
            os.close(fd)
        return out, addr6

    def _meta(self, gen: int) -> bytes:
        fd = self._map("meta")
        try:
            return B.map_lookup(fd, struct.pack("=I", gen), META.size)
        finally:
            os.close(fd)


def _with_epoch(meta: bytes, epoch: int) -> bytes:
    """The meta record with the policy's epoch (connections judged under another epoch are re-judged)."""
    fields = list(META.unpack(meta))
    fields[EPOCH_AT] = epoch & 0xFFFFFFFF
    return META.pack(*fields)


BLOCK = 4096


def _changed(old: bytes, new: bytes, size: int) -> list[tuple[int, int]]:
    """Runs [first, end) of element indices of `new` to rewrite: every element of each 4 KiB block that
    differs (past the end of `old`, every block).

    Rewriting an unchanged element is harmless and cheaper than finding it in Python.
    """
    out: list[tuple[int, int]] = []
    per_block = max(1, BLOCK // size)
    block = per_block * size
    count = len(new) // size
    for start in range(0, len(new), block):
        if old[start:start + block] != new[start:start + block]:
            first = start // size
            end = min(first + per_block, count)
            if out and out[-1][1] == first:
                out[-1] = (out[-1][0], end)
            else:
                out.append((first, end))
    return out


def run_frames(prog_fd: int, frames: list[bytes], repeat: int = 1) -> list[tuple[int, int]]:
    """(XDP return code, ns per run) for each frame."""
    return [B.test_run(prog_fd, f, repeat) for f in frames]
