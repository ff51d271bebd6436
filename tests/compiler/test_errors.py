"""One test per error kind: the code, the position and the message of each diagnostic.

Every case is a small policy with one mistake; `^` in the expected position
column is 1-based like the rendered output. The rendered text of the files in
tests/errors/ is pinned as golden stderr.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from anyplane.ir.source import DiagnosticError

from ..conftest import ROOT, compile_text

SVC = "service a { address 10.0.1.0/24 port 80 http }\nservice b { address 10.0.2.0/24 port 5432 tcp }\n"

# (code, policy text, line, col, words in the message)
CASES = [
    ("syntax", "allow a -> \n", 1, 11, "unexpected end of input"),
    ("syntax", "allow a => b tcp 80\n", 1, 9, "unexpected '='"),
    ("syntax", "allow a -> b tcp 80 $\n", 1, 21, "unexpected character '$'"),
    ("syntax", SVC + "allow a -> b tcp eighty\n", 3, 18, "expected one of a number"),
    ("bad-string", SVC + 'allow a -> a http GET / header "x\\q" present\n', 3, 32, "unknown escape"),
    ("unknown-name", SVC + "allow a -> c tcp 80\n", 3, 12, "unknown endpoint 'c'"),
    ("unknown-version", SVC + "allow a -> b.v9 tcp 80\n", 3, 12, "no version 'v9'"),
    ("duplicate-name", SVC + "external a { address 10.9.0.0/16 }\n", 3, 10, "'a' is declared twice"),
    ("reserved-name", "service http { address 10.0.0.0/8 }\n", 1, 9, "keyword"),
    ("bad-address", "service a { address 10.0.0.1/24 }\n", 1, 21, "host bits set; did you mean 10.0.0.0/24"),
    ("bad-address", "service a { address 10.0.0.0/33 }\n", 1, 21, "not a valid"),
    ("bad-address", SVC + "allow a -> 300.1.1.1 tcp 80\n", 3, 12, "not a valid"),
    ("duplicate-address", SVC + "service c { address 10.0.1.0/24 }\n", 3, 21, "declared by both 'a' and 'c'"),
    ("no-address", "service a { port 80 http }\n", 1, 9, "has no address"),
    ("version-outside", "service a { address 10.0.1.0/24 version v1 address 10.0.9.0/26 }\n", 1, 52, "outside"),
    ("family-mismatch", SVC + "allow a -> fd00::/8 tcp 80\n", 3, 7, "never match"),
    ("bad-port", "service a { address 10.0.1.0/24 port 70000 tcp }\n", 1, 38, "out of range"),
    ("bad-port", SVC + "allow a -> b tcp 65536\n", 3, 18, "out of range 0-65535"),
    ("empty-range", SVC + "allow a -> b tcp 90-80\n", 3, 18, "is empty"),
    ("duplicate-port", "service a { address 10.0.1.0/24 port 80 http port 80 tcp }\n", 1, 51, "declared twice"),
    ("bad-method", SVC + "allow a -> a http FETCH /x\n", 3, 19, "unknown HTTP method 'FETCH'"),
    ("bad-path", SVC + "allow a -> a http GET /a/*/b\n", 3, 23, "only allowed as a final"),
    ("bad-path", SVC + "allow a -> a http GET /a/../b\n", 3, 23, "not in normal form: requests are matched after "
     "normalisation (dot segments, '//', escapes), so write '/b'"),
    ("bad-path", SVC + "allow a -> a http GET //a/*\n", 3, 23, "so write '/a/*'"),
    ("bad-path", SVC + "allow a -> a http GET /%7euser/*\n", 3, 23, "so write '/~user/*'"),
    ("bad-path", SVC + "allow a -> a http GET /caf%c3%a9\n", 3, 23, "so write '/caf%C3%A9'"),
    ("bad-path", SVC + "allow a -> a http GET /a;jsessionid=1\n", 3, 23, "the sidecar refuses such requests"),
    ("bad-path", SVC + "allow a -> a http GET /a%2Fb\n", 3, 23, "escaped slash"),
    ("bad-method", SVC + "allow a -> a http CONNECT /x\n", 3, 19, "does not forward CONNECT"),
    ("bad-header", SVC + 'deny a -> a http GET / header "connection" present\n', 3, 31, "hop-by-hop"),
    ("bad-header", SVC + 'deny a -> a http GET / header "transfer-encoding" present\n', 3, 31, "framing"),
    ("bad-header", SVC + 'deny a -> a http GET / header "proxy-authorization" absent\n', 3, 31, "proxy"),
    ("bad-header", SVC + 'deny a -> a http GET / header "x-envoy-internal" present\n', 3, 31, "x-envoy-*"),
    ("bad-header", SVC + 'deny a -> a http GET / header "host" = "a"\n', 3, 31, "use 'host"),
    ("bad-header", SVC + 'deny a -> a http GET / header "x-request-id" absent\n', 3, 31, "adds one"),
    ("bad-host", SVC + 'allow a -> a http GET / host "api.example.com:8080"\n', 3, 30,
     "write it as 'api.example.com'"),
    ("bad-host", SVC + 'allow a -> a http GET / host "api.example.com."\n', 3, 30, "no final dot"),
    ("bad-header", SVC + 'allow a -> a http GET / header "X Y" present\n', 3, 32, "lower-case HTTP token"),
    ("bad-host", SVC + 'allow a -> a http GET / host "Bad_Host"\n', 3, 30, "write it as 'bad_host'"),
    ("bad-host", SVC + 'allow a -> a http GET / host "a,b"\n', 3, 30, "more than one Host"),
    ("no-http-port", SVC + "allow a -> b http GET /\n", 3, 12, "declare an http port"),
    ("no-http-port", SVC + "allow a -> any http GET /\n", 3, 12, "tcp PORT http"),
    ("http-needs-tcp", SVC + "allow a -> a udp 80 http GET /\n", 3, 14, "HTTP runs over TCP"),
    ("bad-rate", SVC + "deny a -> b tcp 5432 rate 10/s\n", 3, 22, "deny rule cannot have a rate"),
    ("bad-rate", SVC + "allow a -> b tcp 5432 rate 10/d\n", 3, 23, "unknown rate unit"),
    ("bad-rate", SVC + "allow a -> b tcp 5432 rate 0/s\n", 3, 23, "at least 1"),
    ("bad-rate", SVC + "allow a -> b tcp 5432 rate 4294967296/s\n", 3, 23, "more than the engines count"),
    ("bad-rate", SVC + "allow a -> b tcp 5432 rate 10/s burst 18446744073709551616\n", 3, 39,
     "more than the engines hold (4294967295)"),
    ("bad-rate", SVC + "allow a -> a http GET / rate 100/s burst 1\n", 3, 42, "needs a burst of at least 5"),
    ("bad-priority", SVC + "allow a -> b tcp 5432 priority 2000000\n", 3, 32, "out of range"),
    ("duplicate-clause", SVC + "allow a -> b tcp 5432 priority 1 priority 2\n", 3, 43, "one 'priority'"),
    ("bad-number", SVC + "allow a -> b icmp type 300\n", 3, 24, "out of range 0-255"),
    ("duplicate-default", "default deny\ndefault allow\n", 2, 1, "set twice"),
    ("unknown-name", "route nope http /x { to v1 }\n", 1, 7, "unknown service"),
    ("not-a-service", "external e { address 10.0.0.0/8 }\nroute e http /x { timeout 1s }\n", 2, 7, "external"),
    ("unknown-version", SVC + "route a http /x { to v1 }\n", 3, 22, "no version 'v1'"),
    ("bad-weight", "service a { address 10.0.1.0/24 port 80 http version v1 address 10.0.1.0/25 "
                   "version v2 address 10.0.1.128/25 }\nroute a http /x { to v1 80%, v2 30% }\n",
     2, 19, "add up to 110%"),
    ("bad-weight", "service a { address 10.0.1.0/24 port 80 http version v1 address 10.0.1.0/25 "
                   "version v2 address 10.0.1.128/25 }\nroute a http /x { to v1 80%, v2 }\n",
     2, 30, "give every version a weight"),
    ("bad-duration", SVC + "route a http /x { timeout 0s }\n", 3, 27, "must be positive"),
    ("bad-duration", SVC + "route a http /x { timeout 5d }\n", 3, 27, "not a duration"),
    ("bad-retry", SVC + "route a http /x { retry 3 on 418 }\n", 3, 30, "unknown retry condition"),
    ("duplicate-route", SVC + "route a http /x { timeout 1s }\nroute a http /x { timeout 2s }\n", 4, 14,
     "matches exactly what another route"),
    ("no-http-port", SVC + "route b http /x { timeout 1s }\n", 3, 7, "no http port"),
    ("bad-limit", SVC + "limits a { max-connections 0 }\n", 3, 28, "at least 1"),
    ("bad-limit", SVC + "limits a { eject 3 consecutive 4xx for 10s }\n", 3, 32, "unknown ejection condition"),
    ("duplicate-clause", SVC + "limits a { max-pending 1 max-pending 2 }\n", 3, 26, "given twice"),
    ("unknown-name", SVC + "assert reachable a -> nowhere tcp 80\n", 3, 23, "unknown endpoint"),
]


@pytest.mark.parametrize("code,text,line,col,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_error_kind(code, text, line, col, words):
    with pytest.raises(DiagnosticError) as info:
        compile_text(text)
    found = [d for d in info.value.diagnostics if d.code == code]
    assert found, f"no {code} diagnostic; got {[(d.code, d.message) for d in info.value.diagnostics]}"
    d = found[0]
    assert (d.span.file, d.span.line, d.span.col) == ("t.ap", line, col), d
    assert words in d.message
    assert d.severity == "error"


def test_several_errors_are_all_reported():
    text = SVC + "allow a -> nowhere tcp 80\nallow a -> b tcp 99999\ndeny a -> b tcp 5432 rate 1/s\n"
    with pytest.raises(DiagnosticError) as info:
        compile_text(text)
    assert [d.code for d in info.value.diagnostics] == ["unknown-name", "bad-port", "bad-rate"]


def test_syntax_errors_in_several_statements_are_all_reported():
    text = "allow a -> \nservice s { address 10.0.0.0/8 }\nallow s -> s tcp x\nallow s -> s tcp 80\ndeny -> s\n"
    with pytest.raises(DiagnosticError) as info:
        compile_text(text)
    assert [(d.code, d.span.line) for d in info.value.diagnostics] == [("syntax", 2), ("syntax", 3), ("syntax", 5)]


def test_duplicate_name_points_at_both_places():
    with pytest.raises(DiagnosticError) as info:
        compile_text(SVC + "service a { address 10.0.7.0/24 }\n")
    d = info.value.diagnostics[0]
    assert d.code == "duplicate-name" and d.span.line == 3
    assert d.notes and d.notes[0].span.line == 1 and "first declared" in d.notes[0].message


ERROR_FILES = sorted((ROOT / "tests" / "errors").glob("*.ap"))


@pytest.mark.parametrize("path", ERROR_FILES, ids=[p.stem for p in ERROR_FILES])
def test_rendered_errors_match_golden_stderr(path, golden):
    rel = path.relative_to(ROOT)
    proc = subprocess.run([sys.executable, "-m", "anyplane.compiler", "check", str(rel)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    golden(f"../errors/{path.stem}.stderr", proc.stderr)


@pytest.mark.parametrize("text, wanted, unwanted", [
    # After an assert's path, only what an assert takes: not a rule's 'priority' or a route's '{'.
    ("service a { address 10.0.0.0/8 port 80 http }\nassert only a -> a http POST /x -- y\n",
     {"'header'", "'host'"}, {"'priority'", "'rate'", "'{'"}),
    # After a route's path: its '{', not a rule's options.
    ("service a { address 10.0.0.0/8 port 80 http }\nroute a http /x foo { to v1 }\n",
     {"'{'"}, {"'priority'", "'rate'"}),
    # After a rule's destination: not a group's '}'.
    ("group g { 10.0.0.0/8 }\nallow g -> g 80\n", {"'tcp'", "'except'"}, {"'}'", "'->'"}),
])
def test_expected_tokens_are_those_the_statement_takes(text, wanted, unwanted):
    with pytest.raises(DiagnosticError) as exc:
        compile_text(text)
    message = exc.value.diagnostics[0].message
    for w in wanted:
        assert w in message, message
    for u in unwanted:
        assert u not in message, message
