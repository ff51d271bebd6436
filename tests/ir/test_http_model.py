"""The normal form of HTTP requests (`anyplane.ir.http`) as a model: its own laws.

The live tests (tests/backends/envoy/test_envoy_hostile.py) hold Envoy to this model; these
hold the model to itself: normalising twice changes nothing, every path the
verifier invents is in normal form, and every rule path `check` refuses comes
with a suggestion `check` accepts.
"""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from anyplane.compiler.values import path_match
from anyplane.ir import http
from anyplane.ir.flow import Request
from anyplane.verify.domain import PathDomain

PIECES = ["/", "//", "\\", ".", "..", "%2e", "%2E", ";", "%3b", "%", "%2", "%25", "%41", "%7e", "%c3%a9", "a", "B",
          "~", '"', "{", "[", "?", "x=/../", "%%30%30", "%%4%31", "%00", "%2f", "#", " "]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10))
def test_normalising_twice_changes_nothing(pieces):
    target = "/" + "".join(pieces)
    try:
        t = http.parse_target(target)
    except http.Rejected:
        assume(False)
    assert http.is_canonical(t.canonical), (target, t.canonical)
    assert http.normalise_path(t.canonical) == t.canonical
    assert Request.sent_as("GET", target).path == t.canonical


@pytest.mark.parametrize("sent, matched", [
    ("//admin///x", "/admin/x"), ("/x/../admin/y", "/admin/y"), ("/x/%2e%2E/admin/y", "/admin/y"),
    ("/x/..;p/admin/y", "/admin/y"), ("/a/./b/.", "/a/b/"), ("/%61dmin/%7euser", "/admin/~user"),
    ("/a\\b", "/a/b"), ('/a/"{x}"', "/a/%22%7Bx%7D%22"), ("/caf%c3%a9", "/caf%C3%A9"), ("/a?x=/../b", "/a"),
    ("/..", "/"), ("/a/%%30%30", "/a/%2500"), ("/a/.%2e", "/"), ("http://h/a", "/a"),
])
def test_documented_normal_forms(sent, matched):
    assert http.normalise_path(sent) == matched


@pytest.mark.parametrize("sent", ["/a%2Fb", "/a%5c", "/a/%00", "/a#b", "/a b", "/a;b", "/a%3Bb", "/x/é", "*", "a/b",
                                  "/" + "a" * 70_000])
def test_refused_targets(sent):
    with pytest.raises(http.Rejected):
        http.parse_target(sent)


@pytest.mark.parametrize("host, normal", [("API.example.com", "api.example.com"), ("api.example.com.:8080",
                                          "api.example.com"), ("[::1]:80", "[::1]"), ("10.0.0.1:1", "10.0.0.1")])
def test_hosts(host, normal):
    assert http.normalise_host(host) == normal


@pytest.mark.parametrize("host", ["a,b", "", "a:b", "a:", "a..", "a b", "a@b", "[x]"])
def test_refused_hosts(host):
    with pytest.raises(http.Rejected):
        http.normalise_host(host)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["/", "a", "b/", "%C3", "~", "-", "x/y/"]), max_size=6),
       st.lists(st.sampled_from(["/", "a/", "/b", "%41", "~x/"]), max_size=6))
def test_verifier_witness_paths_are_in_normal_form(exact, prefixes):
    literals = {("/" + "".join(exact)).replace("//", "/")}
    starts = {("/" + "".join(prefixes)).replace("//", "/")}
    literals = {p for p in literals if http.is_canonical(p)}
    starts = {p for p in starts if http.is_canonical(p)}
    for w in PathDomain.build(literals, starts).witnesses:
        assert http.is_canonical(w), w


@pytest.mark.parametrize("path", ["/a/../b", "//a/*", "/%7euser/*", "/caf%c3%a9", "/a/./b/"])
def test_every_refused_rule_path_suggests_one_that_is_accepted(path):
    with pytest.raises(ValueError) as info:
        path_match(path)
    suggestion = str(info.value).split("so write '")[1].rstrip("'")
    assert path_match(suggestion)
