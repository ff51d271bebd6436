"""Source spans and diagnostics: the leaf types every layer shares.

A `Span` is where something came from in a policy file; a `Diagnostic` is a
message about a span. `render` prints diagnostics the way compilers do::

    policy.ap:3:9: error: unknown endpoint 'revews'
      allow a -> revews tcp 80
                 ^~~~~~
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

SEVERITIES = ("error", "warning", "info", "note")


class Span(NamedTuple):
    """A region of a policy file: 1-based line and column, end exclusive.

    A named tuple rather than a dataclass: the parser makes one per token and
    node, and tuple construction is several times cheaper. It is immutable and
    orders by (file, line, col), like every other leaf of the IR.
    """

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @property
    def loc(self) -> str:
        """`FILE:LINE`, the form used to name a rule in reports and engines."""
        return f"{self.file}:{self.line}"

    def to_json(self) -> dict:
        """The span as a JSON object."""
        return {"file": self.file, "line": self.line, "col": self.col,
                "end_line": self.end_line, "end_col": self.end_col}


@dataclass(frozen=True, slots=True)
class Note:
    """A secondary location attached to a diagnostic (e.g. the first declaration)."""

    span: Span | None
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about a policy: where, how bad, a stable code and the text."""

    span: Span | None
    severity: str
    code: str
    message: str
    notes: tuple[Note, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_json(self) -> dict:
        """The diagnostic as a JSON object (fields, not prose)."""
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "location": str(self.span) if self.span else None,
            "span": self.span.to_json() if self.span else None,
            "notes": [{"location": str(n.span) if n.span else None, "message": n.message}
                      for n in self.notes],
        }


def error(span: Span | None, code: str, message: str, *notes: Note) -> Diagnostic:
    """Shorthand for an error-level diagnostic."""
    return Diagnostic(span, "error", code, message, tuple(notes))


def warning(span: Span | None, code: str, message: str, *notes: Note) -> Diagnostic:
    """Shorthand for a warning-level diagnostic."""
    return Diagnostic(span, "warning", code, message, tuple(notes))


class DiagnosticError(Exception):
    """Raised with every diagnostic collected when a stage cannot go on."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = tuple(diagnostics)
        first = self.diagnostics[0] if self.diagnostics else None
        super().__init__(f"{first.span}: {first.message}" if first else "error")


@dataclass
class SourceMap:
    """File name -> text, so that diagnostics can quote the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """SHA-256 over every file's name and text: what identifies a policy in output manifests."""
        h = hashlib.sha256()
        for name, text in sorted(self.texts.items()):
            for part in (name, text):
                raw = part.encode("utf-8")
                h.update(len(raw).to_bytes(8, "big") + raw)
        return h.hexdigest()

    def line(self, file: str, line: int) -> str | None:
        """The text of one line, or None when the file or line is unknown."""
        text = self.texts.get(file)
        if text is None:
            return None
        lines = self._lines.get(file)
        if lines is None:
            lines = self._lines[file] = text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None

    def __post_init__(self) -> None:
        self._lines: dict[str, list[str]] = {}


#: An excerpt shows at most this many characters of a line, around the caret.
EXCERPT_WIDTH = 120


def _excerpt(span: Span, sources: SourceMap | Mapping[str, str]) -> list[str]:
    src = sources if isinstance(sources, SourceMap) else SourceMap(dict(sources))
    text = src.line(span.file, span.line)
    if text is None:
        return []
    text = text.expandtabs(1)
    width = span.end_col - span.col if span.end_line == span.line else len(text) - span.col + 1
    width = max(1, min(width, len(text) - span.col + 2, EXCERPT_WIDTH // 2))
    col = span.col
    if len(text) > EXCERPT_WIDTH:  # a long line (minified YAML, one huge flow): the part around the caret
        start = max(0, min(col - 1 - EXCERPT_WIDTH // 2, len(text) - EXCERPT_WIDTH))
        text = ("..." if start else "") + text[start:start + EXCERPT_WIDTH] + \
            ("..." if start + EXCERPT_WIDTH < len(text) else "")
        col = col - start + (3 if start else 0)
    caret = " " * (col - 1) + "^" + "~" * (width - 1)
    return ["  " + text, "  " + caret]


def render(diagnostics: Iterable[Diagnostic], sources: SourceMap | Mapping[str, str] | None = None) -> str:
    """Format diagnostics as `FILE:LINE:COL: severity: message`, the line and a caret."""
    sources = sources if sources is not None else {}
    out: list[str] = []
    for d in diagnostics:
        where = f"{d.span}: " if d.span else "anyplane: "
        out.append(f"{where}{d.severity}: {d.message}")
        if d.span:
            out.extend(_excerpt(d.span, sources))
        for n in d.notes:
            where = f"{n.span}: " if n.span else ""
            out.append(f"{where}note: {n.message}")
            if n.span:
                out.extend(_excerpt(n.span, sources))
    return "\n".join(out) + ("\n" if out else "")
