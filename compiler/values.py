"""Literal values of the language: addresses, durations, rates, paths, headers.

Each parser returns the value or raises ValueError with a message fit for a
diagnostic. Checks call them to report errors; lowering calls them again on
input the checks accepted.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from functools import lru_cache

from anyplane.ir import http
from anyplane.ir.addr import Prefix
from anyplane.ir.flow import HTTP_METHODS

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
RATE_UNITS_S = {"s": 1, "m": 60, "h": 3600}
MAX_DURATION_MS = 24 * 3_600_000

_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()+;=:@/%]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")


@lru_cache(maxsize=1 << 17)
def parse_prefix(text: str) -> Prefix:
    """An address or CIDR; a bare address means a host prefix (cached: checks and lowering share it)."""
    fast = _parse_ipv4_prefix(text)
    if fast is not None:
        return fast
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = str(exc)
        if "has host bits set" in reason:
            suggestion = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"'{text}' has host bits set; did you mean {suggestion}?") from None
        raise ValueError(f"'{text}' is not a valid IPv4 or IPv6 address or prefix") from None
    return Prefix(net.version, int(net.network_address), net.prefixlen)


def _parse_ipv4_prefix(text: str) -> Prefix | None:
    """The common case `a.b.c.d/n` without ipaddress's overhead; None defers to ipaddress."""
    addr, _, length = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and (len(p) == 1 or p[0] != "0") for p in parts):
        return None
    if length and not (length.isdigit() and (len(length) == 1 or length[0] != "0")):
        return None
    a, b, c, d = (int(p) for p in parts)
    n = int(length) if length else 32
    if max(a, b, c, d) > 255 or n > 32:
        return None
    value = a << 24 | b << 16 | c << 8 | d
    if value & ((1 << (32 - n)) - 1):
        return None
    return Prefix(4, value, n)


def parse_duration_ms(text: str) -> int:
    """`250ms`, `2s`, `1m`, `1h` -> milliseconds (positive, at most a day)."""
    m = re.fullmatch(r"([0-9]+)([a-z]+)", text)
    if not m or m.group(2) not in DURATION_UNITS_MS:
        raise ValueError(f"'{text}' is not a duration; use a number with ms, s, m or h (e.g. 250ms, 2s)")
    value = int(m.group(1)) * DURATION_UNITS_MS[m.group(2)]
    if value <= 0:
        raise ValueError(f"duration '{text}' must be positive")
    if value > MAX_DURATION_MS:
        raise ValueError(f"duration '{text}' is longer than 24h")
    return value


def parse_rate_unit(unit: str) -> int:
    """`s`, `m`, `h` -> seconds per period."""
    if unit not in RATE_UNITS_S:
        raise ValueError(f"unknown rate unit '/{unit}'; use /s, /m or /h")
    return RATE_UNITS_S[unit]


def check_method(method: str) -> None:
    """Raise unless the method is a standard HTTP method the sidecar forwards."""
    if method not in HTTP_METHODS:
        try:
            http.check_method(method)
        except http.Rejected as exc:
            if method in http.KNOWN_METHODS:
                raise ValueError(str(exc)) from None
        raise ValueError(f"unknown HTTP method '{method}'; use one of {', '.join(HTTP_METHODS)}")


def path_match(path: str) -> tuple[str, str]:
    """`/a` -> ("exact", "/a"); `/a/*` -> ("prefix", "/a/"); `/*` -> ("prefix", "/")."""
    if not path.startswith("/"):
        raise ValueError(f"path '{path}' must start with '/'")
    body, kind = (path[:-1], "prefix") if path.endswith("/*") else (path, "exact")
    if "*" in body:
        raise ValueError(f"path '{path}': '*' is only allowed as a final '/*' (prefix match)")
    if not _PATH_CHARS.fullmatch(body):
        bad = next(ch for ch in body if not _PATH_CHARS.fullmatch(ch))
        raise ValueError(f"path '{path}' contains {bad!r}, which is not allowed in a URL path")
    if "%" in body and not re.fullmatch(r"([^%]|%[0-9A-Fa-f]{2})*", body):
        raise ValueError(f"path '{path}' has a malformed percent-escape")
    if not http.is_canonical(body):
        raise ValueError(_not_normal(path, body, kind))
    return kind, body


def _not_normal(path: str, body: str, kind: str) -> str:
    """Why a rule path is not in the normal form requests are matched in, and the fix."""
    star = "*" if kind == "prefix" else ""
    try:
        normal = http.normalise_path(body)
    except http.Rejected as exc:
        return f"path '{path}' can never match: the sidecar refuses such requests ({exc})"
    if normal == body:  # only the case of escapes differs
        normal = http.canonical_escapes(body)
    return (f"path '{path}' is not in normal form: requests are matched after normalisation "
            f"(dot segments, '//', escapes), so write '{normal}{star}'")


def check_header_name(name: str) -> None:
    """Raise unless the name is a lower-case HTTP header token the sidecar sees as the client sent it."""
    problem = http.header_problem(name)
    if problem is not None:
        raise ValueError(f"header '{name}' cannot be matched by the sidecar: {problem}")
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"header name {name!r} must be a lower-case HTTP token (letters, digits, '-')")


def check_header_value(value: str) -> None:
    """Raise unless the value is printable ASCII without leading or trailing blanks."""
    if any(not (0x20 <= ord(ch) < 0x7F) for ch in value):
        raise ValueError("header values must be printable ASCII")
    if value != value.strip():
        raise ValueError("header values must not start or end with a space")


def check_host(host: str) -> None:
    """Raise unless the host is in normal form: a lower-case DNS name or address, no port."""
    problem = http.host_problem(host)
    if problem is not None:
        raise ValueError(f"host {host!r} is not the normalised authority requests are matched by "
                         f"(lower case, no :port, no final dot): {problem}")


#: ICMP message types by name: (ICMP number, ICMPv6 number); None where the family has no such message
#: (RFC 792, RFC 4443, RFC 4861).
ICMP_TYPES: dict[str, tuple[int | None, int | None]] = {
    "echo-reply": (0, 129),
    "destination-unreachable": (3, 1),
    "source-quench": (4, None),
    "redirect": (5, 137),
    "echo-request": (8, 128),
    "router-advertisement": (9, 134),
    "router-solicitation": (10, 133),
    "time-exceeded": (11, 3),
    "parameter-problem": (12, 4),
    "timestamp-request": (13, None),
    "timestamp-reply": (14, None),
    "packet-too-big": (None, 2),
    "multicast-listener-query": (None, 130),
    "multicast-listener-report": (None, 131),
    "multicast-listener-done": (None, 132),
    "neighbor-solicitation": (None, 135),
    "neighbor-advertisement": (None, 136),
}


def icmp_type_number(kind: str, name: str) -> int:
    """The number of a named ICMP (`kind` "icmp") or ICMPv6 ("icmp6") message type; ValueError when the
    family has no message of that name."""
    family = 0 if kind == "icmp" else 1
    known = [n for n, numbers in ICMP_TYPES.items() if numbers[family] is not None]
    number = ICMP_TYPES.get(name, (None, None))[family]
    if number is not None:
        return number
    other = "icmp6" if kind == "icmp" else "icmp"
    if name in ICMP_TYPES:
        raise ValueError(f"{kind} has no '{name}' message ({name} is {other} only: write '{other} type {name}')")
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"use a number or one of {', '.join(known)}"
    raise ValueError(f"unknown {kind} type '{name}'; {hint}")
