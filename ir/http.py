"""What the sidecar sees of an HTTP request: the one normal form rules, the interpreter,
the verifier and Envoy agree on.

    GET /x/%2e%2e//Admin/%7eme?q=1   Host: API.example.com.:8080
    ->  method GET, path /Admin/~me (query q=1, never matched), host api.example.com

A rule matches the *normalised* request, and the sidecar forwards that same
normalised path to the application, so what a proof says about a path is what
the application receives. Normalisation is Envoy's (`normalize_path`, then
`merge_slashes`), which this module models step by step:

1. the request target: origin form `/path?query`, or absolute form
   `http://host/path` (its authority replaces the Host header);
2. refused outright (400): a fragment (`#`), bytes outside printable ASCII, a target
   longer than Envoy's 60 KiB header limit,
   escaped slashes (`%2F`, `%5C`, either case), an escaped NUL (`%00`);
3. RFC 3986 path canonicalisation (Chromium's, as Envoy links it):
   `\\` becomes `/`; escapes of unreserved characters are decoded (`%7e` is
   `~`, `%2e` is `.`); characters not allowed in a path are escaped (`"` is
   `%22`); other escapes are kept as sent; `.` and `..` segments are resolved,
   also when written `%2e`, and a `;` parameter after a bare `.` or `..`
   (`..;x`) belongs to the dot segment;
4. runs of slashes merged into one;
5. anyplane's own rule (the sidecar answers 400): a `;` or `%3B` left in the
   path. Servlet containers strip `;parameters` before routing, so
   `/admin;x/y` would reach them as `/admin/y` past a deny of `/admin/*`.

Escapes kept as sent may differ in case (`%c3` and `%C3`); the canonical path
writes them upper case, and the sidecar compares them without regard to case.
Hosts are compared lower case, without a `:port` suffix or a final dot;
methods are case-sensitive and from Envoy's list. See docs/language.md, "What a rule matches".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: Characters RFC 3986 calls unreserved: their escapes are decoded.
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Printable ASCII characters a path keeps escaped (Chromium's path table); the rest pass as sent.
ESCAPED_IN_PATH = frozenset(' "#<>?^`{|}')
HEX = "0123456789abcdefABCDEF"
_PARAM_DOT_SEGMENT = re.compile(r"(?<=/)(\.\.?);[^/]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SEMICOLON = re.compile(r";|%3[bB]")
#: The methods Envoy's HTTP/1 codec accepts (http-parser's list but M-SEARCH); it answers 400 to any other.
KNOWN_METHODS = frozenset((
    "DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK "
    "BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH "
    "PURGE MKCALENDAR LINK UNLINK SOURCE").split())
_HOST = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_IPV6_HOST = re.compile(r"\[[0-9a-f:.]+\]")
_ABSOLUTE = re.compile(r"(?i:https?)://([^/?#]*)(.*)")
#: Envoy's limit on the request line and headers together (max_request_headers_kb, 60 KiB); a target
#: alone past it is always refused (431).
MAX_TARGET = 60 * 1024

#: Headers the sidecar cannot match as the client sent them, and why (reported by `check`).
UNMATCHABLE_HEADERS = {
    "connection": "a hop-by-hop header: Envoy removes it before any filter sees the request",
    "keep-alive": "a hop-by-hop header: Envoy removes it before any filter sees the request",
    "proxy-connection": "a hop-by-hop header: Envoy removes it before any filter sees the request",
    "te": "a hop-by-hop header: Envoy removes it before any filter sees the request",
    "transfer-encoding": "a framing header: Envoy decodes the body and removes it",
    "upgrade": "a hop-by-hop header: Envoy removes it before any filter sees the request",
    "trailer": "a hop-by-hop header: intermediaries may drop it",
    "content-length": "a framing header: it describes the body, and HTTP/2 may leave it out",
    "host": "the authority, not a header: use 'host \"NAME\"', which is normalised",
    "x-request-id": "the sidecar adds one to every request that has none",
    "x-forwarded-proto": "the sidecar adds it to every request that has none",
    "x-forwarded-client-cert": "the sidecar removes it from requests that arrive without mTLS",
}
UNMATCHABLE_PREFIXES = {
    "proxy-": "a hop-by-hop header meant for a proxy: intermediaries consume or drop it",
    "x-envoy-": "Envoy owns the x-envoy-* headers: it removes or rewrites several of them",
}


class Rejected(ValueError):
    """The sidecar refuses the request (400) before any rule is consulted."""


@dataclass(frozen=True, slots=True)
class Target:
    """A request target as the sidecar reads it: the path as forwarded, the query, and the
    authority of an absolute-form target (None for origin form)."""

    path: str
    query: str | None
    authority: str | None

    @property
    def canonical(self) -> str:
        """The path rules are matched against: the forwarded path with escapes in upper case."""
        return canonical_escapes(self.path)


def canonical_escapes(path: str) -> str:
    """Percent-escapes written with upper-case hex digits."""
    return _ESCAPE.sub(lambda m: "%" + m.group(1).upper(), path)


def _is_dot(path: str, i: int) -> int:
    """Length of a dot at `i`: 1 for `.`, 3 for `%2e`/`%2E`, 0 otherwise."""
    if path[i] == ".":
        return 1
    if path[i] == "%" and path[i + 1:i + 3] in ("2e", "2E"):
        return 3
    return 0


def _after_dot(path: str, at: int) -> tuple[str, int]:
    """What follows a dot that starts a segment: ("cur" | "up" | "name", input consumed after it)."""
    end = len(path)
    if at == end:
        return "cur", 0
    if path[at] in "/\\":
        return "cur", 1
    second = _is_dot(path, at)
    if second:
        after = at + second
        if after == end:
            return "up", second
        if path[after] in "/\\":
            return "up", second + 1
    return "name", 0


def _decode(path: str, i: int) -> int | None:
    """The byte an escape `%XY` at `i` stands for, or None when it is not a valid escape."""
    a, b = path[i + 1:i + 2], path[i + 2:i + 3]
    if a and b and a in HEX and b in HEX:
        return int(a + b, 16)
    return None


def _nested_escape(path: str, nxt: int, percent: int, out: list[str]) -> None:
    """After decoding an escape next to an earlier lone `%`, keep the two from forming a new
    escape (`%%30%30` must not turn into `%00`): that `%` becomes `%25`."""
    probe = out[percent:]
    if percent == len(out) - 2:  # "%c": the next input character would complete it
        if nxt >= len(path) or ord(path[nxt]) >= 0x80:
            return
        probe = probe + [path[nxt]]
    if _decode("".join(probe), 0) is not None:
        out[percent + 1:percent + 1] = ["2", "5"]


def _canonicalise(path: str) -> str:
    """RFC 3986 path canonicalisation as Envoy applies it (step 3 of the module docstring)."""
    out: list[str] = [] if path.startswith(("/", "\\")) else ["/"]
    percent = -10  # index in `out` of the last '%' that began no valid escape
    i, end = 0, len(path)
    while i < end:
        ch = path[i]
        dot = _is_dot(path, i)
        if dot:
            if out and out[-1] == "/":
                kind, used = _after_dot(path, i + dot)
                if kind == "name":
                    out.append(".")
                    i += dot
                    continue
                if kind == "up":
                    _up(out)
                    if percent >= len(out):
                        percent = -10
                i += dot + used
                continue
            out.append(".")
            i += dot
        elif ch == "\\":
            out.append("/")
            i += 1
        elif ch == "%":
            value = _decode(path, i)
            if value is None:
                percent = len(out)
                out.append("%")
                i += 1
            elif chr(value) in UNRESERVED:
                out.append(chr(value))
                i += 3
                if percent >= len(out) - 3:
                    _nested_escape(path, i, percent, out)
            else:
                out.extend(path[i:i + 3])
                i += 3
        elif ch in ESCAPED_IN_PATH:
            out.extend(f"%{ord(ch):02X}")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _up(out: list[str]) -> None:
    """Drop the last segment of the output (which ends with '/'), never past the first slash."""
    k = len(out) - 1
    if k == 0:
        return
    k -= 1
    while out[k] != "/" and k > 0:
        k -= 1
    del out[k + 1:]


def _merge_slashes(path: str) -> str:
    """Runs of slashes become one, keeping a leading and a trailing slash."""
    if "//" not in path:
        return path
    inner = "/".join(s for s in path.split("/") if s)
    return "/" + inner + ("/" if path.endswith("/") and inner else "")


def parse_target(target: str) -> Target:
    """The path (as the sidecar forwards it), query and authority of a request target; raises
    Rejected for targets the sidecar refuses."""
    if len(target) > MAX_TARGET:
        raise Rejected(f"the request target is longer than {MAX_TARGET} bytes")
    bad = next((ch for ch in target if not 0x21 <= ord(ch) <= 0x7E), None)
    if bad is not None:
        raise Rejected(f"the request target contains {bad!r}: only printable ASCII is allowed")
    if "#" in target:
        raise Rejected("the request target carries a fragment ('#')")
    authority = None
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute:
        authority, target = absolute.group(1), absolute.group(2) or "/"
    if not target.startswith("/"):
        raise Rejected("the request target must be a path starting with '/' (or an absolute http URL)")
    path, sep, query = target.partition("?")
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered:
        raise Rejected("the path contains an escaped slash (%2F or %5C)")
    path = _PARAM_DOT_SEGMENT.sub(r"\1", path)
    if "%00" in path:
        raise Rejected("the path contains an escaped NUL (%00)")
    path = _merge_slashes(_canonicalise(path))
    if _SEMICOLON.search(path):
        raise Rejected("the path contains ';' (or %3B): path parameters are refused, since servlet "
                       "containers strip them before routing")
    return Target(path, query if sep else None, authority)


def normalise_path(target: str) -> str:
    """The canonical path of a request target (raises Rejected)."""
    return parse_target(target).canonical


@lru_cache(maxsize=1 << 14)
def is_canonical(path: str) -> bool:
    """Whether a path is its own normal form (the only paths rules and flows may name)."""
    try:
        return "?" not in path and normalise_path(path) == path
    except Rejected:
        return False


def host_problem(host: str) -> str | None:
    """Why a host is not in normal form (None when it is)."""
    try:
        normal = normalise_host(host)
    except Rejected as exc:
        return str(exc)
    return None if normal == host else f"write it as {normal!r}"


def normalise_host(authority: str) -> str:
    """The host rules compare: lower case, no `:port`, no final dot; raises Rejected."""
    if "," in authority:
        raise Rejected("the request has more than one Host (Envoy joins them with ',')")
    host = authority.lower()
    if host.startswith("["):
        m = re.fullmatch(r"(\[[^\]]*\])(:[0-9]+)?", host)
        if not m or not _IPV6_HOST.fullmatch(m.group(1)):
            raise Rejected(f"host {authority!r} is not a bracketed IPv6 address with an optional :port")
        return m.group(1)
    name, colon, port = host.rpartition(":") if ":" in host else (host, "", "")
    if colon and not port.isdigit():
        raise Rejected(f"host {authority!r} has a malformed :port")
    if name.endswith("."):
        name = name[:-1]
    if not _HOST.fullmatch(name):
        raise Rejected(f"host {authority!r} is not a DNS name or an address")
    return name


def check_method(method: str) -> None:
    """Raise Rejected unless the method is one the sidecar forwards."""
    if method not in KNOWN_METHODS:
        raise Rejected(f"method {method!r} is not one Envoy's HTTP/1 codec accepts (methods are case-sensitive)")
    if method == "CONNECT":
        raise Rejected("the sidecar does not forward CONNECT (tunnels)")


def header_problem(name: str) -> str | None:
    """Why the sidecar cannot match a header as the client sent it (None when it can)."""
    if name.startswith(":"):
        return "a pseudo-header: match the method, path and host with their own clauses"
    if name in UNMATCHABLE_HEADERS:
        return UNMATCHABLE_HEADERS[name]
    for prefix, why in UNMATCHABLE_PREFIXES.items():
        if name.startswith(prefix):
            return why
    return None
