"""The normal form of `anyplane.ir.http` in Envoy: connection-manager settings, the routes
that refuse what the normal form refuses, and string matchers that compare paths and hosts the
way the interpreter does.

    rule path /files/%C3%A9/*   ->  :path matches ^/files/%[cC]3%[aA]9/   (escapes in either case)
    rule host "api.example.com" ->  :authority equal to it, ignoring case
"""

from __future__ import annotations

import re

TYPE = "type.googleapis.com/"
HCM = TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

#: How the sidecar normalises every request before any filter or route sees it.
NORMALISE = {"normalize_path": True, "merge_slashes": True,
             "path_with_escaped_slashes_action": "REJECT_REQUEST"}
#: Inbound only: the authority loses its port and final dot (outbound routes select the port by it).
NORMALISE_HOST = {"strip_any_host_port": True, "strip_trailing_host_dot": True}

_LABEL = "[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
#: Requests the normal form refuses but Envoy's codec lets through: the route table answers 400.
REFUSED = (
    ("path-parameter", {"safe_regex": {"google_re2": {}, "regex": ".*(;|%3[bB]).*"}}),
    ("bad-host", {"prefix": "/", "headers": [{"name": ":authority", "invert_match": True, "string_match": {
        "safe_regex": {"google_re2": {}, "regex": rf"{_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]"}}}]}),
)


def refused_routes() -> list[dict]:
    """Routes answering 400 to what the normal form refuses (they come before every other route)."""
    return [{"name": f"refuse-{name}", "match": match,
             "direct_response": {"status": 400, "body": {"inline_string": f"refused: {name}\n"}}}
            for name, match in REFUSED]


def _path_regex(path: str) -> str:
    """A regex for a canonical path whose escapes may arrive in either case (Envoy keeps their case)."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "%":
            out.append("%" + "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in path[i + 1:i + 3]))
            i += 3
        else:
            out.append(re.escape(path[i]))
            i += 1
    return "".join(out)


def path_with_query(value: str, exact: bool) -> dict:
    """A string matcher on `:path` (which carries the query string) for a canonical path or prefix."""
    if exact:
        return {"safe_regex": {"google_re2": {}, "regex": _path_regex(value) + r"(\?.*)?"}}
    if "%" in value:
        return {"safe_regex": {"google_re2": {}, "regex": _path_regex(value) + ".*"}}
    return {"prefix": value}


def route_path(value: str, exact: bool) -> dict:
    """A route's path match (routes see the path without the query string)."""
    if "%" not in value:
        return {"path": value} if exact else {"prefix": value}
    return {"safe_regex": {"google_re2": {}, "regex": _path_regex(value) + ("" if exact else ".*")}}


def authority(host: str, port_suffix: bool) -> dict:
    """A string matcher on `:authority` for a normalised host; with `port_suffix`, the authority may
    still carry a `:port` and a final dot (outbound, where Envoy leaves them)."""
    if not port_suffix:
        return {"exact": host, "ignore_case": True}
    return {"safe_regex": {"google_re2": {}, "regex": "(?i)" + re.escape(host) + r"\.?(:[0-9]+)?"}}
