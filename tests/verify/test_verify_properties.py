"""The verifier against brute force: for random small policies, every answer equals
what exhaustive enumeration of flow classes through the interpreter says.

The universe (tests/brute.py) holds one flow per class of behaviour, so
"no flow" claims are checked exhaustively, and "some flow" claims too.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from anyplane.compiler.pipeline import compile_sources
from anyplane.compiler.whatif import query_pattern
from anyplane.ir.actions import RateLimit
from anyplane.ir.interp import evaluate, match_holds, owner
from anyplane.ir.nodes import Table, precedence
from anyplane.ir.source import DiagnosticError, Span
from anyplane.verify.classes import holds
from anyplane.verify.context import Analysis
from anyplane.verify.diff import diff
from anyplane.verify.reach import reachability
from anyplane.verify.run import verify

from ..brute import universe
from ..conftest import examples
from ..strategies import policies, patterns

EXAMPLES = examples(120)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compile(text):
    try:
        return compile_sources([("p.ap", text)])
    except DiagnosticError:
        return None


def _key(d):
    rate = d.rate.bucket if isinstance(d.rate, RateLimit) else None
    return (d.verdict, rate)


def _without(program, rule_id):
    entries = tuple(e for e in program.acl.entries if e.rule != rule_id)
    return replace(program, acl=Table(program.acl.name, entries))


@SETTINGS
@given(policies(max_rules=5, small=True))
@example("external a { address 10.0.0.0/16 }\ndefault allow\nallow a -> a rate 10/s\nallow a -> a rate 10/s\n")
@example("external a { address 10.0.0.0/16 }\nexternal b { address fd00::/64 }\ndefault allow\n"
         "deny a.* except b -> a priority 2\ndeny a.* except b -> 10.0.1.7 icmp type 8 code 0 priority 2\n")
def test_dead_and_redundant_rules_match_brute_force(text):
    """The oracle, over every flow class. Line order means nothing, so a rule is judged as if it came first
    among the entries of its precedence. It is dead (an error) when rules of higher precedence take all
    its flows and decide some of them otherwise; redundant (a warning) when they take all its flows and
    decide them alike, or when removing it changes no decision."""
    c = _compile(text)
    assume(c is not None)
    program = c.program
    flows = universe([program])
    decisions = [evaluate(program, f) for f in flows]
    findings = verify(program).findings
    reported_dead = {f.span for f in findings if f.kind == "dead"}
    reported_redundant = {f.span for f in findings if f.kind == "redundant"}
    for rule in program.rules:
        entries = [e for e in program.acl.entries if e.rule == rule.id]
        rank = precedence(entries[0])
        mine = [(f, d) for f, d in zip(flows, decisions) if any(match_holds(e.match, f, d.src_id, d.dst_id)
                                                               for e in entries)]
        outranked = bool(mine) and all(d.entry is not None and precedence(d.entry) < rank for _, d in mine)
        if outranked:
            own = _key(evaluate(replace(program, acl=Table("acl", tuple(entries)), default="deny"), mine[0][0]))
            alike = all(_key(d) == own for _, d in mine)
            dead, redundant = not alike, alike
        else:
            # The rule first among its equals: its entries sort before theirs (an earlier origin).
            first = replace(program, acl=Table("acl", tuple(
                replace(e, origin=Span("", 0, 0, 0, 0)) if e.rule == rule.id else e for e in program.acl.entries)))
            other = _without(program, rule.id)
            dead = False
            redundant = all(_key(evaluate(other, f)) == _key(evaluate(first, f)) for f in flows)
        assert (rule.origin in reported_dead) == dead, f"dead mismatch for {rule.text}"
        assert (rule.origin in reported_redundant) == redundant, f"redundant mismatch for {rule.text}"


@SETTINGS
@given(st.data())
def test_queries_match_brute_force(data):
    text = data.draw(policies(max_rules=5, small=True))
    c = _compile(text)
    assume(c is not None)
    try:
        pattern = query_pattern(c, data.draw(patterns(text)))
    except DiagnosticError:
        assume(False)
    program = c.program
    flows = universe([program], pattern)
    inside = [f for f in flows
              if any(match_holds(m, f, owner(program, f.family, f.src), owner(program, f.family, f.dst)) for m in pattern)]
    expected = any(evaluate(program, f).verdict == "allow" for f in inside)
    result = reachability(Analysis(program, extra=list(pattern)), pattern)
    assert result.reachable == expected
    if expected:
        assert evaluate(program, result.witness).verdict == "allow"


@SETTINGS
@given(policies(max_rules=4, small=True), st.data())
def test_diff_matches_brute_force(text, data):
    old = _compile(text)
    assume(old is not None)
    # The new version: the same declarations, one rule dropped and one random rule added.
    lines = text.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.startswith(("allow", "deny"))]
    if rule_lines:
        lines.pop(data.draw(st.sampled_from(rule_lines)))
    lines.append(data.draw(st.sampled_from(["allow any -> any tcp 80", "deny 10.0.0.0/8 -> any",
                                            "allow 10.0.1.7 -> any udp 82 priority 2", "deny any -> any icmp"])))
    new = _compile("\n".join(lines) + "\n")
    assume(new is not None)
    report = diff(old.program, new.program)
    flows = universe([old.program, new.program])
    pairs = [(evaluate(old.program, f).verdict, evaluate(new.program, f).verdict) for f in flows]
    assert bool(report.newly_allowed) == (("deny", "allow") in pairs)
    assert bool(report.newly_denied) == (("allow", "deny") in pairs)
    for c in report.newly_allowed:
        assert (evaluate(old.program, c.witness).verdict, evaluate(new.program, c.witness).verdict) == ("deny", "allow")
    for c in report.newly_denied:
        assert (evaluate(old.program, c.witness).verdict, evaluate(new.program, c.witness).verdict) == ("allow", "deny")
    for c in report.newly_allowed + report.newly_denied + report.changed:
        d_old, d_new = evaluate(old.program, c.witness), evaluate(new.program, c.witness)
        if c.flows is not None:
            # The class's flows, as boxes: exactly the flows decided by the class's two entries.
            boxes, boxer = c.flows
            assert c.described["exact"] and holds(boxes, boxer, new.program, c.witness)
            for f in flows:
                mine = (evaluate(old.program, f).entry, evaluate(new.program, f).entry) == (d_old.entry, d_new.entry)
                assert holds(boxes, boxer, new.program, f) == mine, (f.text, c.described["text"])
            continue
        # Otherwise the class in words is the deciding entry's flows; "whole" says whether every one of
        # them is decided by the class's two rules.
        program, entry = (new.program, d_new.entry) if d_new.entry is not None else (old.program, d_old.entry)
        ids = lambda f, p=program: (owner(p, f.family, f.src), owner(p, f.family, f.dst))  # noqa: E731
        inside = [f for f in flows if entry is None or match_holds(entry.match, f, *ids(f))]
        same = [(evaluate(old.program, f).rule, evaluate(new.program, f).rule) == (c.old_rule, c.new_rule)
                for f in inside]
        assert c.described["whole"] == all(same), (c.described, c.old_rule, c.new_rule)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(max_rules=4, small=True))
@example("external a { address 10.0.0.0/16 }\ndefault deny\nallow a -> a tcp 80\nallow a -> a\n")
@example("external a { address 10.0.0.0/16 }\ndefault allow\ndeny a -> a udp\ndeny a -> a\n"
         "allow a -> a udp 53 priority 1\n")
def test_findings_do_not_depend_on_the_order_of_lines(text):
    """Line order carries no meaning: every permutation of a policy's lines gets the same findings (by
    kind, severity and rule), so a CI gate cannot pass or fail on how the lines are ordered."""
    from itertools import permutations

    lines = text.splitlines()
    assume(_compile(text) is not None)
    rules = [line for line in lines if line.startswith(("allow", "deny"))]
    rest = [line for line in lines if line not in rules]
    seen = None
    for order in permutations(rules):  # the declarations stay first: they give the rules their names
        c = _compile("\n".join(rest + list(order)) + "\n")
        texts = {r.origin.line: r.text for r in c.program.rules}
        got = sorted((f.kind, f.severity, texts.get(f.span.line) if f.span else None)
                     for f in verify(c.program).findings)
        if seen is None:
            seen = got
        assert got == seen, (order, got, seen)


# -- the overlap index against pairwise tests -----------------------------------------------------------
def _prefix_boxes():
    from anyplane.ir.addr import Prefix

    def prefix(draw_family, value, length):
        width = 32 if draw_family == 4 else 128
        length = min(length, width)
        return Prefix(draw_family, (value % (1 << width)) >> (width - length) << (width - length), length)
    prefixes = st.builds(prefix, st.sampled_from([4, 4, 6]),
                         st.sampled_from([0x0A000000, 0x0A010000, 0x0A010200, 0xC0A80000, 1 << 127 | 5]),
                         st.sampled_from([0, 8, 16, 24, 32, 64]))
    from anyplane.ir.space import merge

    # A box's port ranges are a set of ranges (sorted and merged), as `Boxer.box` makes them.
    ranges = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1])),
                      min_size=1, max_size=3).map(merge)
    return st.builds(
        lambda *fields: fields,
        st.none() | st.lists(prefixes, min_size=0, max_size=3).map(tuple),
        st.none() | st.lists(prefixes, min_size=1, max_size=2).map(tuple),
        st.none() | st.frozensets(st.sampled_from([1, 6, 17, 58]), min_size=1, max_size=2),
        st.none() | ranges, st.none() | ranges)


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(_prefix_boxes(), min_size=1, max_size=40), _prefix_boxes(),
       st.tuples(st.sampled_from([4, 6]), st.sampled_from([0x0A010203, 0x0A000000, 0xC0A80001, 1 << 127 | 5]),
                 st.sampled_from([0x0A010203, 0x0A0102FF, 0]), st.sampled_from([1, 6, 17]),
                 st.none() | st.integers(0, 140), st.none() | st.integers(0, 140)))
def test_the_overlap_index_finds_exactly_the_overlapping_boxes(fields, query, point):
    """The index's bit masks against the pairwise test `overlaps` and per-box containment of one header."""
    from anyplane.verify.index import Box, OverlapIndex, members, overlaps

    boxes = [Box(*f) for f in fields]
    index = OverlapIndex(boxes)
    q = Box(*query)
    assert index.candidates(q) == [i for i, b in enumerate(boxes) if overlaps(b, q)]
    family, src, dst, proto, sport, dport = point
    src, dst = (a % (1 << (32 if family == 4 else 128)) for a in (src, dst))  # an address of its family

    def inside(prefixes, address):
        return prefixes is None or any(p.contains(family, address) for p in prefixes)

    def holds(ranges, port):
        return ranges is None or (port is not None and any(lo <= port <= hi for lo, hi in ranges))
    expected = [i for i, b in enumerate(boxes) if inside(b.src, src) and inside(b.dst, dst)
                and (b.proto is None or proto in b.proto) and holds(b.sport, sport) and holds(b.dport, dport)]
    assert members(index.at_mask(family, src, dst, proto, sport, dport)) == expected
