"""The reference interpreter on hand-written policies with hand-computed answers."""

from __future__ import annotations

import pytest

from anyplane.compiler.flows import parse_flow
from anyplane.ir.interp import evaluate, owner
from anyplane.ir.addr import parse_address
from anyplane.ir.project import project_l4

from ..conftest import compile_text

NESTED = """
external internet { address 0.0.0.0/0, ::/0 }
external corp     { address 10.0.0.0/8 }
service  api      { address 10.1.0.0/16, fd00:1::/64  port 8080 http
                    version v1 address 10.1.0.0/17
                    version v2 address 10.1.128.0/17 }
service  db       { address 10.2.0.5/32  port 5432 tcp }
default deny
"""


def decide(compiled, flow_text: str):
    return evaluate(compiled.program, parse_flow(flow_text, compiled.symbols, compiled.program))


def test_longest_prefix_ownership():
    c = compile_text(NESTED)
    p = c.program
    assert owner(p, *parse_address("10.1.2.3")) == "api.v1"
    assert owner(p, *parse_address("10.1.200.1")) == "api.v2"
    assert owner(p, *parse_address("10.2.0.5")) == "db"
    assert owner(p, *parse_address("10.2.0.6")) == "corp"
    assert owner(p, *parse_address("11.0.0.1")) == "internet"
    assert owner(p, *parse_address("fd00:1::9")) == "api"
    assert owner(p, *parse_address("fd00:2::9")) == "internet"


def test_a_service_inside_a_broader_external_belongs_to_the_service():
    c = compile_text(NESTED + "allow corp -> db tcp 5432\n")
    # 10.1.0.9 is inside corp's 10/8 but belongs to api: the corp rule does not apply to it.
    assert decide(c, "10.1.0.9 -> db tcp 5432").verdict == "deny"
    assert decide(c, "10.9.0.9 -> db tcp 5432").verdict == "allow"


def test_a_name_covers_its_versions_and_a_version_only_itself():
    c = compile_text(NESTED + "allow api -> db tcp 5432\nallow api.v2 -> db tcp 6000\n")
    assert decide(c, "api.v1 -> db tcp 5432").verdict == "allow"
    assert decide(c, "api.v1 -> db tcp 6000").verdict == "deny"
    assert decide(c, "api.v2 -> db tcp 6000").verdict == "allow"


def test_a_raw_cidr_covers_every_address_inside_whoever_owns_it():
    c = compile_text(NESTED + "allow 10.0.0.0/8 -> db tcp 5432\n")
    assert decide(c, "10.1.0.9 -> db tcp 5432").verdict == "allow"
    assert decide(c, "11.0.0.1 -> db tcp 5432").verdict == "deny"


def test_higher_priority_decides():
    c = compile_text(NESTED + "allow any -> db tcp 5432\ndeny corp -> db priority 5\n"
                              "allow 10.9.0.0/16 -> db tcp 5432 priority 9\n")
    assert decide(c, "10.8.0.1 -> db tcp 5432").verdict == "deny"
    d = decide(c, "10.9.0.1 -> db tcp 5432")
    assert d.verdict == "allow" and d.rule == "t.ap:11"
    assert decide(c, "11.0.0.1 -> db tcp 5432").verdict == "allow"


def test_deny_beats_allow_at_equal_priority_whatever_the_order():
    for rules in ("allow any -> db tcp 5432\ndeny corp -> db\n", "deny corp -> db\nallow any -> db tcp 5432\n"):
        c = compile_text(NESTED + rules)
        d = decide(c, "10.8.0.1 -> db tcp 5432")
        assert d.verdict == "deny"
        assert "deny" in c.program.rule(d.entry.rule).text


def test_the_slower_rate_limit_decides_at_equal_priority():
    c = compile_text(NESTED + "allow any -> db tcp 5432 rate 10/s\nallow corp -> db tcp 5432 rate 5/s\n"
                              "allow corp -> db tcp 5432\n")
    d = decide(c, "10.8.0.1 -> db tcp 5432")
    assert d.verdict == "allow" and (d.rate.count, d.rate.per_s) == (5, 1)


@pytest.mark.parametrize("default,verdict", [("deny", "deny"), ("allow", "allow")])
def test_the_default_decides_when_nothing_matches(default, verdict):
    c = compile_text(NESTED.replace("default deny", f"default {default}") + "allow corp -> db tcp 5432\n")
    d = decide(c, "11.0.0.1 -> db udp 53")
    assert (d.verdict, d.rule, d.entry) == (verdict, None, None)


def test_the_default_is_deny_when_not_written():
    c = compile_text(NESTED.replace("default deny", ""))
    assert decide(c, "11.0.0.1 -> db tcp 5432").verdict == "deny"


def test_an_http_rule_applies_to_the_destinations_http_port_only():
    c = compile_text(NESTED + "allow corp -> api http GET /v1/*\n")
    assert decide(c, "10.8.0.1 -> api http GET /v1/users").verdict == "allow"
    assert decide(c, "10.8.0.1 -> api tcp 8080 http GET /v1/users").verdict == "allow"
    assert decide(c, "10.8.0.1 -> api tcp 9999 http GET /v1/users").verdict == "deny"
    assert decide(c, "10.8.0.1 -> api http POST /v1/users").verdict == "deny"
    assert decide(c, "10.8.0.1 -> api http GET /v1").verdict == "deny"  # /v1/* needs the slash
    # A connection that carries no HTTP request is not matched by an HTTP rule...
    assert decide(c, "10.8.0.1 -> api tcp 8080").verdict == "deny"
    # ...but the L4 projection (what kernel and switch enforce) admits it.
    proj = project_l4(c.program)
    flow = parse_flow("10.8.0.1 -> api tcp 8080", c.symbols, c.program)
    assert evaluate(proj, flow).verdict == "allow"


def test_http_headers_host_and_exact_paths():
    c = compile_text(NESTED + 'allow corp -> api http GET /a header "x-k" = "1" header "x-no" absent\n'
                              'allow corp -> api http GET /b host "api.local"\n')
    assert decide(c, 'corp -> api http GET /a header "x-k" = "1"').verdict == "allow"
    assert decide(c, 'corp -> api http GET /a header "x-k" = "2"').verdict == "deny"
    assert decide(c, 'corp -> api http GET /a header "x-k" = "1" header "x-no" = "y"').verdict == "deny"
    assert decide(c, 'corp -> api http GET /a/').verdict == "deny"
    assert decide(c, 'corp -> api http GET /b host "api.local"').verdict == "allow"
    assert decide(c, 'corp -> api http GET /b').verdict == "deny"


def test_ipv6_flows():
    c = compile_text(NESTED + "allow internet -> api tcp 8080\ndeny 2001:db8::/32 -> api priority 1\n")
    assert decide(c, "2001:db9::1 -> fd00:1::5 tcp 8080").verdict == "allow"
    assert decide(c, "2001:db8::1 -> fd00:1::5 tcp 8080").verdict == "deny"
    assert decide(c, "2001:db9::1 -> fd00:1::5 tcp 8081").verdict == "deny"


def test_icmp_means_icmp_over_v4_and_icmpv6_over_v6():
    c = compile_text(NESTED + "allow any -> api icmp type 8\nallow any -> api icmp6 type 128\n")
    assert decide(c, "11.0.0.1 -> 10.1.0.1 icmp type 8 code 0").verdict == "allow"
    assert decide(c, "11.0.0.1 -> 10.1.0.1 icmp type 0 code 0").verdict == "deny"
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type 128 code 0").verdict == "allow"
    # A numbered type is one family's: ICMPv6 type 8 is not an echo request, and `icmp type 8` does not
    # match it.
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type 8 code 0").verdict == "deny"
    # Protocol 58 over IPv4 is not ICMP: it carries no type, so a typed icmp rule cannot match it.
    assert decide(c, "11.0.0.1 -> 10.1.0.1 proto 58").verdict == "deny"


def test_named_icmp_types_match_the_message_in_each_family():
    c = compile_text(NESTED + "allow any -> api icmp type echo-request\nallow any -> api icmp6 type packet-too-big\n")
    assert decide(c, "11.0.0.1 -> 10.1.0.1 icmp type 8 code 0").verdict == "allow"
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type 128 code 0").verdict == "allow"
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type echo-request").verdict == "allow"
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type 2 code 0").verdict == "allow"
    assert decide(c, "2001:db9::1 -> fd00:1::5 icmp6 type 8 code 0").verdict == "deny"
    assert decide(c, "11.0.0.1 -> 10.1.0.1 icmp type 2 code 0").verdict == "deny"


def test_port_lists_ranges_and_source_ports():
    c = compile_text(NESTED + "allow any -> db tcp 80, 443, 8000-8080 sport 1024-65535\n")
    for port, verdict in ((80, "allow"), (443, "allow"), (444, "deny"), (8000, "allow"), (8080, "allow"),
                          (8081, "deny"), (7999, "deny")):
        assert decide(c, f"11.0.0.1 -> db tcp {port} sport 2000").verdict == verdict, port
    assert decide(c, "11.0.0.1 -> db tcp 80 sport 1023").verdict == "deny"


def test_routes_follow_gateway_api_precedence_not_file_order():
    c = compile_text(NESTED + """
allow any -> api http * /*
route api http /* { to v1 }
route api http /v2/* { to v2 }
route api http /v2/beta { to v1 50%, v2 50% }
route api http GET /v2/* { timeout 1s }
route api http /v2/* header "x-pin" = "v1" { to v1 }
""")
    def route_of(flow):
        d = decide(c, flow)
        return d.route.origin.line if d.route else None
    assert route_of("corp -> api http GET /x") == 11
    assert route_of("corp -> api http POST /v2/a") == 12
    assert route_of("corp -> api http POST /v2/beta") == 13   # exact path beats every prefix
    assert route_of("corp -> api http GET /v2/a") == 14       # a method match beats none...
    assert route_of('corp -> api http POST /v2/a header "x-pin" = "v1"') == 15  # ...and headers count next
    assert route_of('corp -> api http GET /v2/a header "x-pin" = "v1"') == 14


def test_denied_requests_get_no_route_and_limits_apply_to_allowed_ones():
    c = compile_text(NESTED + "allow corp -> api http GET /*\nroute api http /* { timeout 1s }\n"
                              "limits api { max-connections 5 }\n")
    assert decide(c, "corp -> api http POST /").route is None
    d = decide(c, "corp -> api http GET /")
    assert d.route is not None and d.limits.max_connections == 5
