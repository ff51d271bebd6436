"""SARIF 2.1.0 output for `anyplane verify --format sarif`, so code-scanning UIs show findings on policy lines."""

from __future__ import annotations

import hashlib
import re

from .result import KINDS, Finding

#: Positions inside messages ("p.ap:12", "line 12") change when lines move; fingerprints leave them out.
_POSITIONS = re.compile(r"(?<=\.ap):\d+(:\d+)?|\bline \d+")

_LEVEL = {"error": "error", "warning": "warning", "info": "note", "note": "note"}
_DESCRIPTIONS = {
    "dead": "A rule that decides no flow: rules before it decide every flow it matches.",
    "redundant": "A rule whose removal changes no decision.",
    "fragments-only": "A rule that decides only non-first fragments: rules before it take every packet with ports.",
    "conflict": "An allow and a deny overlap; priority decides where they do.",
    "rate-conflict": "Overlapping allows at the same priority with different rate limits.",
    "assertion-failed": "An assert that does not hold.",
    "route-unreachable": "A route that no allowed request takes.",
    "unused-version": "A service version that receives no traffic.",
    "ownership": "A name in a rule that does not cover addresses declared inside its prefixes.",
    "shared-identity": "Under mutual TLS, workloads that hold one certificate: a rule naming one admits the others.",
    "unknown": "The solver could not decide (timeout): not a pass.",
}


def _location(span) -> dict:
    return {"physicalLocation": {
        "artifactLocation": {"uri": span.file},
        "region": {"startLine": span.line, "startColumn": span.col, "endLine": span.end_line,
                   "endColumn": span.end_col}}}


def diagnostics_to_sarif(diagnostics, version: str) -> dict:
    """A SARIF log for a policy that does not compile: each diagnostic is a result at its span."""
    results = []
    for d in diagnostics:
        result = {"ruleId": d.code, "level": _LEVEL.get(d.severity, "error"), "message": {"text": d.message}}
        if d.span is not None:
            result["locations"] = [_location(d.span)]
        results.append(result)
    return _log(results, [{"id": c, "shortDescription": {"text": "The policy does not compile."}}
                          for c in sorted({d.code for d in diagnostics})], version)


def fingerprint(f: Finding, seen: dict) -> str:
    """A finding's identity across edits that move lines: its kind, file and message without positions
    (and which occurrence of that it is), hashed. Code-scanning keeps one alert per fingerprint."""
    key = "\0".join((f.kind, f.span.file if f.span else "", _POSITIONS.sub(":*", f.message)))
    n = seen[key] = seen.get(key, 0) + 1
    return hashlib.sha256(f"{key}\0{n}".encode()).hexdigest()[:32]


def to_sarif(findings: list[Finding], version: str) -> dict:
    """A SARIF log with one run."""
    results = []
    seen: dict = {}
    for f in findings:
        result = {"ruleId": f.kind, "level": _LEVEL[f.severity], "message": {"text": f.message},
                  "partialFingerprints": {"anyplaneFinding/v1": fingerprint(f, seen)}}
        if f.span is not None:
            result["locations"] = [_location(f.span)]
        if f.related:
            result["relatedLocations"] = [dict(_location(s), id=n) for n, s in enumerate(f.related)]
        if f.witness is not None:
            result["properties"] = {"witness": f.witness.to_json()}
        if f.suppressed:
            result["suppressions"] = [{"kind": "inSource",
                                       "justification": f"# anyplane: allow {f.kind} on the rule"}]
        results.append(result)
    rules = [{"id": k, "shortDescription": {"text": _DESCRIPTIONS[k]}} for k in KINDS]
    return _log(results, rules, version)


def _log(results: list[dict], rules: list[dict], version: str) -> dict:
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "anyplane", "version": version,
                                      "informationUri": "https://github.com/anyplane/anyplane", "rules": rules}},
                  "results": results}],
    }
