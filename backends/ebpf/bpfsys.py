"""The bpf(2) calls the loader needs, through ctypes: no libbpf binding is required.

Only what anyplane uses: create, pin and open maps, update (also in batches)
and look up elements, and BPF_PROG_TEST_RUN. Programs are loaded by bpftool,
which understands the ELF object libbpf-style.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)

MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
OBJ_PIN, OBJ_GET, PROG_TEST_RUN = 6, 7, 10
MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 14, 15
MAP_LOOKUP_BATCH, MAP_UPDATE_BATCH = 24, 26

ARRAY, PERCPU_ARRAY, LPM_TRIE, ARRAY_OF_MAPS = 2, 6, 11, 12
F_NO_PREALLOC, F_INNER_MAP = 1, 1 << 12
ANY = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
ATTR_SIZE = 128


class BpfError(OSError):
    """A bpf(2) call failed."""


def _call(cmd: int, attr: bytearray, what: str) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = _libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf {what}: {os.strerror(err)}")
    return ret


def _ptr(buf) -> int:
    return ctypes.addressof(buf)


def possible_cpus() -> int:
    """Number of possible CPUs (per-CPU map values hold one slot each)."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               inner_fd: int = 0, name: str = "") -> int:
    """BPF_MAP_CREATE; returns the map fd."""
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=IIIIIII", attr, 0, map_type, key_size, value_size, max_entries, flags, inner_fd, 0)
    attr[28:28 + 15] = name.encode()[:15].ljust(15, b"\0")
    return _call(MAP_CREATE, attr, f"create {name or 'map'}")


def obj_get(path: str) -> int:
    """Open a pinned object."""
    p = ctypes.create_string_buffer(path.encode())
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=Q", attr, 0, _ptr(p))
    return _call(OBJ_GET, attr, f"open {path}")


def obj_pin(fd: int, path: str) -> None:
    """Pin an object under bpffs."""
    p = ctypes.create_string_buffer(path.encode())
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=QI", attr, 0, _ptr(p), fd)
    _call(OBJ_PIN, attr, f"pin {path}")


def map_update(fd: int, key: bytes, value: bytes, flags: int = ANY) -> None:
    """BPF_MAP_UPDATE_ELEM."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, _ptr(k), _ptr(v), flags)
    _call(MAP_UPDATE_ELEM, attr, "update")


def map_delete(fd: int, key: bytes) -> None:
    """BPF_MAP_DELETE_ELEM (absent keys are fine)."""
    k = ctypes.create_string_buffer(key, len(key))
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQ", attr, 0, fd, 0, _ptr(k))
    try:
        _call(MAP_DELETE_ELEM, attr, "delete")
    except BpfError as exc:
        if exc.errno != 2:
            raise


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> None:
    """BPF_MAP_UPDATE_BATCH: `count` fixed-size keys and values, concatenated."""
    if count == 0:
        return
    k, v = ctypes.create_string_buffer(keys, len(keys)), ctypes.create_string_buffer(values, len(values))
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=QQQQII", attr, 0, 0, 0, _ptr(k), _ptr(v), count, fd)
    _call(MAP_UPDATE_BATCH, attr, "batch update")


def map_lookup_batch(fd: int, first: int, count: int, value_size: int) -> bytes:
    """BPF_MAP_LOOKUP_BATCH over an array map: the values of keys first .. first + count - 1. The
    kernel walks keys after the one given (`in_batch`), so the walk starts from first - 1."""
    out = bytearray()
    key = first
    chunk = max(1, (1 << 20) // value_size)
    while key < first + count:
        n = min(chunk, first + count - key)
        start = ctypes.create_string_buffer(struct.pack("=I", key - 1), 4) if key else None
        after = ctypes.create_string_buffer(4)
        keys, values = ctypes.create_string_buffer(4 * n), ctypes.create_string_buffer(value_size * n)
        attr = bytearray(ATTR_SIZE)
        struct.pack_into("=QQQQII", attr, 0, _ptr(start) if start is not None else 0, _ptr(after), _ptr(keys),
                         _ptr(values), n, fd)
        try:
            _call(MAP_LOOKUP_BATCH, attr, "batch lookup")
        except BpfError as exc:
            if exc.errno != 2:  # ENOENT: the map ended before n keys
                raise
        got = struct.unpack_from("=I", attr, 32)[0]
        if not got:
            raise BpfError(2, f"bpf batch lookup: no element at key {key}")
        out += values.raw[:got * value_size]
        key += got
    return bytes(out)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM (None when the key is absent)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, fd, 0, _ptr(k), _ptr(v))
    try:
        _call(MAP_LOOKUP_ELEM, attr, "lookup")
    except BpfError as exc:
        if exc.errno == 2:
            return None
        raise
    return v.raw


def map_keys(fd: int, key_size: int):
    """Every key of a hash map, by BPF_MAP_GET_NEXT_KEY (a map that changes meanwhile may repeat or
    skip keys, as for any walk of a live hash map)."""
    key = None
    out = ctypes.create_string_buffer(key_size)
    while True:
        attr = bytearray(ATTR_SIZE)
        k = ctypes.create_string_buffer(key, key_size) if key is not None else None
        struct.pack_into("=IIQQ", attr, 0, fd, 0, _ptr(k) if k is not None else 0, _ptr(out))
        try:
            _call(MAP_GET_NEXT_KEY, attr, "next key")
        except BpfError as exc:
            if exc.errno == 2:
                return
            raise
        key = out.raw
        yield key


def map_fd_by_id(map_id: int) -> int:
    """An fd for a map id (inner maps are returned by id from array-of-maps lookups)."""
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=I", attr, 0, map_id)
    return _call(MAP_GET_FD_BY_ID, attr, f"open map id {map_id}")


def test_run(prog_fd: int, data: bytes, repeat: int = 1) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: (return value, average duration in ns)."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    attr = bytearray(ATTR_SIZE)
    struct.pack_into("=IIIIQQII", attr, 0, prog_fd, 0, len(data), len(out), _ptr(buf), _ptr(out), repeat, 0)
    _call(PROG_TEST_RUN, attr, "test run")
    retval, = struct.unpack_from("=I", attr, 4)
    duration, = struct.unpack_from("=I", attr, 36)
    return retval, duration
