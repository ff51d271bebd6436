"""Canonical formatting: AST -> policy text that parses to the same IR.

One statement per line, two-space indentation inside blocks. A block written
on one line stays on one line; comments stay with the item they precede (or
trail). Blank lines between statements are kept, at most one. Like gofmt,
runs of adjacent rules align their source and destination columns, and runs
of adjacent one-line blocks align their bodies.
"""

from __future__ import annotations

from . import ast

BLOCK_WIDTH = 100


def format_ports(ranges) -> str:
    """`80, 443, 8000-8080`."""
    return ", ".join(str(r.lo.value) if r.lo.value == r.hi.value else f"{r.lo.value}-{r.hi.value}" for r in ranges)


def format_l4(l4: ast.L4) -> str:
    """The L4 part as written canonically."""
    if l4.kind in ("tcp", "udp"):
        out = l4.kind
        if l4.ports:
            out += " " + format_ports(l4.ports)
        if l4.sports:
            out += " sport " + format_ports(l4.sports)
        return out
    if l4.kind in ("icmp", "icmp6"):
        out = l4.kind
        if l4.icmp_type is not None:
            t = l4.icmp_type
            out += f" type {t.value if isinstance(t, ast.Num) else t.text}"
            if l4.icmp_code is not None:
                out += f" code {l4.icmp_code.value}"
        return out
    return f"proto {l4.proto.value}" + (" fragment" if l4.fragment else "")


def format_l7(l7: ast.L7) -> str:
    """The HTTP part as written canonically."""
    parts = ["http"]
    if l7.any_method:
        parts.append("*")
    elif l7.methods:
        parts.append(", ".join(m.text for m in l7.methods))
    if l7.paths:
        parts.append(", ".join(p.text for p in l7.paths))
    if l7.host is not None:
        parts += ["host", l7.host.raw]
    for h in l7.headers:
        parts += ["header", h.name.raw]
        parts += [h.test] if h.test != "equals" else ["=", h.value.raw]
    return " ".join(parts)


def format_side(refs, excluded=()) -> str:
    """`a, b` or `a, b except c`."""
    out = ", ".join(e.text for e in refs)
    return out + " except " + ", ".join(e.text for e in excluded) if excluded else out


def format_pattern(p: ast.Pattern) -> str:
    """`SRC -> DST [l4] [l7]`."""
    parts = [format_side(p.src, p.src_except), "->", format_side(p.dst, p.dst_except)]
    if p.l4 is not None:
        parts.append(format_l4(p.l4))
    if p.peer is not None:
        parts.append("peer " + (p.peer.raw if isinstance(p.peer, ast.Str) else p.peer.text))
    if p.l7 is not None:
        parts.append(format_l7(p.l7))
    return " ".join(parts)


def format_rule(r: ast.Rule) -> str:
    """`allow|deny PATTERN [rate ...] [priority N]`."""
    out = f"{r.verdict.text} {format_pattern(r.pattern)}"
    for rate in r.rates:
        out += f" rate {rate.count}/{rate.unit}" + (f" burst {rate.burst.value}" if rate.burst else "")
    for n in r.priorities:
        out += f" priority {n.value}"
    return out


def _item(item) -> str:
    if isinstance(item, ast.AddressClause):
        return "address " + ", ".join(a.text for a in item.addresses)
    if isinstance(item, ast.PortClause):
        last = f"-{item.last.value}" if item.last is not None else ""
        return f"port {item.number.value}{last} {item.protocol.text}"
    if isinstance(item, ast.VersionClause):
        return f"version {item.name.text} address " + ", ".join(a.text for a in item.addresses)
    if isinstance(item, ast.NamespaceClause):
        return f"namespace {item.name.text}"
    if isinstance(item, ast.LabelsClause):
        return "labels " + ", ".join(w.text for w in item.labels)
    if isinstance(item, ast.AccountClause):
        return f"account {item.name.text}"
    if isinstance(item, ast.WorkloadMtls):
        return f"mtls {item.mode.text}"
    if isinstance(item, ast.RouteTo):
        return "to " + ", ".join(b.version.text + (f" {b.weight.value}%" if b.weight else "") for b in item.backends)
    if isinstance(item, ast.RouteTimeout):
        return f"timeout {item.duration.text}"
    if isinstance(item, ast.RouteRetry):
        out = f"retry {item.attempts.value}"
        if item.conditions:
            out += " on " + ", ".join(c.text for c in item.conditions)
        if item.per_try is not None:
            out += f" per-try {item.per_try.text}"
        return out
    if isinstance(item, ast.ConnectionItem):
        return f"{item.key.text} {item.value.text}"
    if isinstance(item, ast.LimitValue):
        return f"{item.key.text} {item.value.value}"
    if isinstance(item, ast.LimitEject):
        return f"eject {item.consecutive.value} consecutive {item.condition.text} for {item.duration.text}"
    raise TypeError(f"unknown block item {type(item).__name__}")


def _head(stmt) -> str:
    if isinstance(stmt, ast.Service):
        return f"{stmt.keyword} {stmt.name.text}"
    if isinstance(stmt, ast.External):
        return f"external {stmt.name.text}"
    if isinstance(stmt, ast.Route):
        return f"route {stmt.service.text} {format_l7(stmt.l7)}"
    if isinstance(stmt, ast.Group):
        return f"group {stmt.name.text}"
    if isinstance(stmt, ast.Connections):
        return "connections"
    return f"limits {stmt.service.text}"


def format_statement(stmt) -> str:
    """One statement on one line (blocks flattened); used for rule texts and messages."""
    if isinstance(stmt, ast.Rule):
        return format_rule(stmt)
    if isinstance(stmt, ast.Default):
        return f"default {stmt.verdict.text}"
    if isinstance(stmt, ast.Stateless):
        return "stateless"
    if isinstance(stmt, ast.Mtls):
        return f"mtls {stmt.mode.text}" + (f" trust-domain {stmt.trust_domain.raw}" if stmt.trust_domain else "")
    if isinstance(stmt, ast.Assert):
        kind = "only" if stmt.only else "reachable" if stmt.reachable else "not reachable"
        return f"assert {kind} {format_pattern(stmt.pattern)}"
    if isinstance(stmt, ast.Group):
        members = ", ".join(m.text for m in stmt.members)
        return f"group {stmt.name.text} {{ {members} }}" if members else f"group {stmt.name.text} {{ }}"
    inner = " ".join(_item(i) for i in stmt.items)
    return f"{_head(stmt)} {{ {inner} }}" if inner else f"{_head(stmt)} {{ }}"


class _Comments:
    """Hands out comments in source order as the printer passes positions."""

    def __init__(self, comments):
        self.pending = sorted(comments, key=lambda c: (c.span.line, c.span.col))

    def before(self, line: int) -> list[ast.Comment]:
        """Comments on lines before `line`, not yet printed."""
        out = []
        while self.pending and self.pending[0].span.line < line:
            out.append(self.pending.pop(0))
        return out

    def trailing(self, line: int) -> str:
        """A comment at the end of `line`, if any, as text to append."""
        if self.pending and self.pending[0].span.line == line:
            return "  " + self.pending.pop(0).text
        return ""


def _cells(stmt) -> tuple[str, list[str]] | None:
    """Alignment kind and columns of a one-line statement (None: not aligned)."""
    if isinstance(stmt, ast.Rule):
        p = stmt.pattern
        text = format_rule(stmt)
        src, dst = format_side(p.src, p.src_except), format_side(p.dst, p.dst_except)
        rest = text[len(f"{stmt.verdict.text} {src} -> {dst}"):].strip()
        # The priority is a column of its own: a first-match policy reads down it.
        rest, _, priority = rest.partition("priority ") if stmt.priorities else (rest, "", "")
        return "rule", [stmt.verdict.text, src, "->", dst, rest.strip(), f"priority {priority}" if priority else ""]
    if isinstance(stmt, (ast.Service, ast.External)):
        head = _head(stmt)
        return head.split()[0], [head, format_statement(stmt)[len(head):].strip()]
    return None


def _align(rows: list, table: bool = False) -> list[str]:
    """Pad the columns of each run of same-kind rows; plain strings pass through. With `table`, every
    rule of the file pads to the same columns: a first-match policy reads as one table."""
    out: list[str] = []
    rules = [r[1] for r in rows if not isinstance(r, str) and r[0] == "rule"]
    whole = [max(len(cells[c]) for cells in rules) for c in range(len(rules[0]) - 1)] if table and rules else None
    i = 0
    while i < len(rows):
        if isinstance(rows[i], str):
            out.append(rows[i])
            i += 1
            continue
        j = i
        while j < len(rows) and not isinstance(rows[j], str) and rows[j][0] == rows[i][0]:
            j += 1
        run = rows[i:j]
        width = whole if whole and run[0][0] == "rule" else \
            [max(len(r[1][c]) for r in run) for c in range(len(run[0][1]) - 1)]
        for _, cells, trailing in run:
            padded = [cell.ljust(width[c]) for c, cell in enumerate(cells[:-1])] + [cells[-1]]
            out.append(" ".join(padded).rstrip() + trailing)
        i = j
    return out


def format_file(sf: ast.SourceFile) -> str:
    """A whole file, canonically formatted, comments kept."""
    comments = _Comments(sf.comments)
    out: list = []
    last: list[int] = []

    def emit(lines: list, start: int, end: int) -> None:
        if last and start > last[0] + 1:
            out.append("")
        out.extend(lines)
        last[:] = [end]

    for stmt in sf.statements:
        for c in comments.before(stmt.span.line):
            emit([c.text], c.span.line, c.span.line)
        blocky = isinstance(stmt, (ast.Service, ast.External, ast.Route, ast.Limits, ast.Group, ast.Connections))
        one_line = format_statement(stmt)
        if not blocky or (stmt.span.line == stmt.span.end_line and len(one_line) <= BLOCK_WIDTH):
            trailing = comments.trailing(stmt.span.end_line)
            cells = _cells(stmt)
            row = (cells[0], cells[1], trailing) if cells else one_line + trailing
            emit([row], stmt.span.line, stmt.span.end_line)
            continue
        lines = [f"{_head(stmt)} {{" + comments.trailing(stmt.span.line)]
        items = stmt.members if isinstance(stmt, ast.Group) else stmt.items
        for k, item in enumerate(items):
            lines += ["  " + c.text for c in comments.before(item.span.line)]
            text = item.text + ("," if k < len(items) - 1 else "") if isinstance(stmt, ast.Group) else _item(item)
            lines.append("  " + text + comments.trailing(item.span.end_line))
        lines += ["  " + c.text for c in comments.before(stmt.span.end_line)]
        lines.append("}" + comments.trailing(stmt.span.end_line))
        emit(lines, stmt.span.line, stmt.span.end_line)
    for c in comments.before(10**9):
        emit([c.text], c.span.line, c.span.line)
    rules = [s for s in sf.statements if isinstance(s, ast.Rule)]
    table = bool(rules) and all(r.priorities for r in rules)
    return "\n".join(_align(out, table)) + "\n" if out else ""
