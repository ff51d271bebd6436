"""`# anyplane: allow KIND[, KIND]`: findings the author accepts on one rule, on purpose.

    deny any -> db tcp 5432   # anyplane: allow redundant   (kept to document the intent)

    # anyplane: allow conflict, redundant
    allow office -> db tcp 5432

The comment applies to the rule on its own line, or else to the next statement,
which must be a rule. verify still reports the finding, marked suppressed (in
JSON and SARIF); it never fails the run.

    # anyplane: imported

before a file's first statement says its rules are a translation (`anyplane import` writes it): their
dead, redundant and conflicting rules are the translation's, accepted on every rule of the file, as
`verify` of the manifests themselves leaves them out. Remove the line to make the rules your own.
"""

from __future__ import annotations

import re
from bisect import bisect_right

from anyplane.ir.findings import KINDS
from anyplane.ir.source import Diagnostic, Span, error

from . import ast

DIRECTIVE = re.compile(r"#\s*anyplane\s*:\s*(.*?)\s*$")
#: What a translation's rules may be without it being the author's finding.
TRANSLATION = ("dead", "redundant", "conflict")
ALLOW = re.compile(r"allow\s+([a-z-]+(?:\s*,\s*[a-z-]+)*)$")


def suppressions(policy: ast.Policy) -> tuple[dict[Span, tuple[str, ...]], list[Diagnostic]]:
    """Rule span -> the finding kinds accepted on it, and errors for malformed directives."""
    out: dict[Span, tuple[str, ...]] = {}
    diags: list[Diagnostic] = []
    for f in policy.files:
        statements = sorted(f.statements, key=lambda s: (s.span.line, s.span.col))
        lines = [s.span.line for s in statements]
        for c in f.comments:
            m = DIRECTIVE.match(c.text)
            if m is None:
                continue
            if m.group(1) == "imported":
                if statements and c.span.line > statements[0].span.line:
                    diags.append(error(c.span, "bad-directive", "'# anyplane: imported' goes before the file's "
                                                                "first statement"))
                    continue
                for st in statements:
                    if isinstance(st, ast.Rule):
                        out[st.span] = tuple(dict.fromkeys(out.get(st.span, ()) + TRANSLATION))
                continue
            allow = ALLOW.match(m.group(1))
            if allow is None:
                diags.append(error(c.span, "bad-directive", "write '# anyplane: allow KIND' (KIND: one of "
                                                            f"{', '.join(KINDS)})"))
                continue
            kinds = tuple(k.strip() for k in allow.group(1).split(","))
            bad = [k for k in kinds if k not in KINDS]
            if bad:
                diags.append(error(c.span, "bad-directive", f"unknown finding kind '{bad[0]}'; use one of "
                                                            f"{', '.join(KINDS)}"))
                continue
            k = bisect_right(lines, c.span.line) - 1
            on_line = k >= 0 and statements[k].span.line <= c.span.line <= statements[k].span.end_line
            target = statements[k] if on_line else (statements[k + 1] if k + 1 < len(statements) else None)
            if not isinstance(target, ast.Rule):
                diags.append(error(c.span, "bad-directive", "'# anyplane: allow' applies to a rule: put it at the "
                                                            "end of the rule's line or on the line before it"))
                continue
            out[target.span] = tuple(dict.fromkeys(out.get(target.span, ()) + kinds))
    return out, diags
