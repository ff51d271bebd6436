"""Parse policy text into the AST; turn lark errors into diagnostics.

    text --lark LALR--> parse tree --ToAst--> ast.SourceFile

Syntax errors are reported as `Diagnostic`s with code `syntax`. After an
error, parsing resumes at the next line that starts a statement, so one run
reports every broken statement of a file, not only the first.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from anyplane.ir.source import Diagnostic, DiagnosticError, Span, error

from . import ast

STATEMENT_KEYWORDS = ("service", "external", "default", "allow", "deny", "route", "limits", "assert")
MAX_SYNTAX_ERRORS = 20

#: How a terminal is described in "expected ..." messages.
TERMINAL_WORDS = {
    "NAME": "a name",
    "ADDRESS": "an address",
    "INT": "a number",
    "METHOD": "an HTTP method",
    "PATH": "a path",
    "STRING": "a quoted string",
    "RATE": "a rate such as 100/s",
    "DURATION": "a duration such as 2s",
    "COND": "a condition such as 5xx",
    "APP_PROTOCOL": "a protocol (http, grpc, tcp, udp)",
    "LIMIT_KEY": "a limit (max-connections, max-pending, max-requests, max-retries)",
}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files("anyplane.compiler").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=False, start=["start", "pattern_start", "rule_start"])


def _span(path: str, meta_or_token) -> Span:
    m = meta_or_token
    return Span(path, m.line, m.column, m.end_line, m.end_column)


def _join(path: str, first: Span, last: Span) -> Span:
    return Span(path, first.line, first.col, last.end_line, last.end_col)


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def unescape(raw: str) -> str:
    """Decode a string literal's body; raises ValueError on an unknown escape."""
    body = raw[1:-1]
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2:i + 4]):
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        else:
            raise ValueError(f"unknown escape '\\{nxt}' in string")
    return "".join(out)


class _Sport(tuple):
    """Marks the port list that follows `sport`."""


@v_args(meta=True)
class ToAst(Transformer):
    """Parse tree -> AST nodes with spans in file `path`."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.diagnostics: list[Diagnostic] = []

    # -- helpers ------------------------------------------------------------
    def _s(self, meta) -> Span:
        return _span(self.path, meta)

    def _word(self, tok: Token) -> ast.Word:
        return ast.Word(str(tok), _span(self.path, tok))

    def _num(self, tok: Token) -> ast.Num:
        return ast.Num(int(tok), _span(self.path, tok))

    def _str(self, tok: Token) -> ast.Str:
        try:
            value = unescape(str(tok))
        except ValueError as exc:
            self.diagnostics.append(error(_span(self.path, tok), "bad-string", str(exc)))
            value = str(tok)[1:-1]
        return ast.Str(value, str(tok), _span(self.path, tok))

    # -- files --------------------------------------------------------------
    def start(self, meta, children):
        return tuple(children)

    def pattern_start(self, meta, children):
        return children[0]

    def rule_start(self, meta, children):
        return children[0]

    # -- endpoints ------------------------------------------------------------
    def service(self, meta, children):
        return ast.Service(self._word(children[0]), tuple(children[1:]), self._s(meta))

    def address_clause(self, meta, children):
        return ast.AddressClause(tuple(self._word(t) for t in children), self._s(meta))

    def port_clause(self, meta, children):
        return ast.PortClause(self._num(children[0]), self._word(children[1]), self._s(meta))

    def version_clause(self, meta, children):
        name, *addrs = children
        return ast.VersionClause(self._word(name), tuple(self._word(t) for t in addrs), self._s(meta))

    def external(self, meta, children):
        return ast.External(self._word(children[0]), tuple(children[1:]), self._s(meta))

    # -- rules --------------------------------------------------------------
    def default(self, meta, children):
        return ast.Default(children[0], self._s(meta))

    def verdict(self, meta, children):
        return self._word(children[0])

    def rule(self, meta, children):
        verdict, src, dst, *rest = children
        l4 = next((c for c in rest if isinstance(c, ast.L4)), None)
        l7 = next((c for c in rest if isinstance(c, ast.L7)), None)
        last = (l7 or l4 or dst[-1]).span
        pattern = ast.Pattern(src, dst, l4, l7, _join(self.path, src[0].span, last))
        rates = tuple(c for c in rest if isinstance(c, ast.Rate))
        priorities = tuple(c for c in rest if isinstance(c, ast.Num))
        return ast.Rule(verdict, pattern, rates, priorities, self._s(meta))

    def rate(self, meta, children):
        count, unit = str(children[0]).split("/")
        burst = self._num(children[1]) if len(children) > 1 else None
        return ast.Rate(int(count), unit, burst, self._s(meta))

    def priority(self, meta, children):
        return self._num(children[0])

    def endpoints(self, meta, children):
        return tuple(children)

    def ep_name(self, meta, children):
        return ast.EndpointRef("name", self._word(children[0]), None, None, self._s(meta))

    def ep_version(self, meta, children):
        return ast.EndpointRef("version", self._word(children[0]), self._word(children[1]), None,
                               self._s(meta))

    def ep_address(self, meta, children):
        return ast.EndpointRef("address", None, None, self._word(children[0]), self._s(meta))

    def ep_any(self, meta, children):
        return ast.EndpointRef("any", None, None, None, self._s(meta))

    def l4_ports(self, meta, children):
        kind, *rest = children
        ports = next((c for c in rest if not isinstance(c, _Sport)), ())
        sports = next((c for c in rest if isinstance(c, _Sport)), ())
        return ast.L4(str(kind), tuple(ports), tuple(sports), None, None, None, self._s(meta))

    def sport(self, meta, children):
        return _Sport(children[0])

    def ports(self, meta, children):
        return tuple(children)

    def port_range(self, meta, children):
        lo = self._num(children[0])
        hi = self._num(children[1]) if len(children) > 1 else lo
        return ast.PortRange(lo, hi, self._s(meta))

    def l4_icmp(self, meta, children):
        icmp_type, icmp_code = children[0] if children else (None, None)
        return ast.L4("icmp", (), (), icmp_type, icmp_code, None, self._s(meta))

    def icmp_type(self, meta, children):
        return (self._num(children[0]), self._num(children[1]) if len(children) > 1 else None)

    def l4_proto(self, meta, children):
        return ast.L4("proto", (), (), None, None, self._num(children[0]), self._s(meta))

    def l7(self, meta, children):
        methods, any_method, paths, host, headers = (), False, (), None, []
        for c in children:
            if isinstance(c, tuple) and c and c[0] == "methods":
                methods, any_method = c[1], c[2]
            elif isinstance(c, tuple) and c and c[0] == "paths":
                paths = c[1]
            elif isinstance(c, ast.Str):
                host = c
            else:
                headers.append(c)
        return ast.L7(methods, any_method, paths, host, tuple(headers), self._s(meta))

    def methods(self, meta, children):
        if children[0].type == "STAR":
            return ("methods", (), True)
        return ("methods", tuple(self._word(t) for t in children), False)

    def paths(self, meta, children):
        return ("paths", tuple(self._word(t) for t in children))

    def host(self, meta, children):
        return self._str(children[0])

    def header(self, meta, children):
        name, test = children
        if isinstance(test, Token) and test.type in ("PRESENT", "ABSENT"):
            return ast.HeaderTest(self._str(name), str(test), None, self._s(meta))
        return ast.HeaderTest(self._str(name), "equals", self._str(test), self._s(meta))

    # -- traffic management ------------------------------------------------------
    def route(self, meta, children):
        name, l7, *items = children
        return ast.Route(self._word(name), l7, tuple(items), self._s(meta))

    def route_to(self, meta, children):
        return ast.RouteTo(tuple(children), self._s(meta))

    def backend(self, meta, children):
        weight = self._num(children[1]) if len(children) > 1 else None
        return ast.BackendRef(self._word(children[0]), weight, self._s(meta))

    def route_timeout(self, meta, children):
        return ast.RouteTimeout(self._word(children[0]), self._s(meta))

    def route_retry(self, meta, children):
        attempts, *rest = children
        conds = tuple(self._word(t) for t in rest if t.type == "COND")
        per_try = next((self._word(t) for t in rest if t.type == "DURATION"), None)
        return ast.RouteRetry(self._num(attempts), conds, per_try, self._s(meta))

    def limits(self, meta, children):
        return ast.Limits(self._word(children[0]), tuple(children[1:]), self._s(meta))

    def limit_value(self, meta, children):
        return ast.LimitValue(self._word(children[0]), self._num(children[1]), self._s(meta))

    def limit_eject(self, meta, children):
        n, cond, duration = children
        return ast.LimitEject(self._num(n), self._word(cond), self._word(duration), self._s(meta))

    # -- assertions --------------------------------------------------------------
    def assertion(self, meta, children):
        reachable = not (len(children) == 2)
        return ast.Assert(reachable, children[-1], self._s(meta))

    def pattern(self, meta, children):
        src, dst, *rest = children
        l4 = next((c for c in rest if isinstance(c, ast.L4)), None)
        l7 = next((c for c in rest if isinstance(c, ast.L7)), None)
        return ast.Pattern(src, dst, l4, l7, self._s(meta))


def _describe_expected(names) -> str:
    """Human words for a set of terminal names; statement keywords collapse into one phrase."""
    lark = _lark()
    words, keywords, statement = set(), set(), False
    for name in names:
        if name == "$END":
            continue
        if name in TERMINAL_WORDS:
            words.add(TERMINAL_WORDS[name])
            continue
        try:
            pattern = lark.get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type != "str":
            continue
        if pattern.value in STATEMENT_KEYWORDS and name not in ("ALLOW", "DENY"):
            statement = True
        else:
            keywords.add(f"'{pattern.value}'")
    if statement:
        keywords -= {"'allow'", "'deny'"}
    ordered = sorted(words) + sorted(keywords) + (["a new statement"] if statement else [])
    if len(ordered) > 1:
        return "one of " + ", ".join(ordered[:-1]) + " or " + ordered[-1]
    return ", ".join(ordered)


def _syntax_diagnostic(path: str, exc: UnexpectedInput, text: str) -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else ""
        span = Span(path, exc.line, exc.column, exc.line, exc.column + 1)
        return error(span, "syntax", f"unexpected character {ch!r}")
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        span = _span(path, tok)
        expected = _describe_expected(getattr(exc, "accepts", None) or exc.expected)
        message = f"unexpected '{tok}'"
        if tok.type == "NAME" and str(tok) in STATEMENT_KEYWORDS:
            message = f"unexpected '{tok}' (the previous statement is incomplete)"
        return error(span, "syntax", message + (f", expected {expected}" if expected else ""))
    lines = text.splitlines() or [""]
    line = len(lines)
    col = len(lines[-1]) + 1
    expected = _describe_expected(getattr(exc, "expected", ()) or ())
    return error(Span(path, line, col, line, col + 1), "syntax",
                 "unexpected end of input" + (f", expected {expected}" if expected else ""))


_STATEMENT_START = re.compile(r"^[ \t]*(" + "|".join(STATEMENT_KEYWORDS) + r")\b", re.M)


def _blank_until(text: str, line: int) -> str:
    """The text with every line before `line` blanked, so positions stay put."""
    lines = text.split("\n")
    return "\n".join(" " * len(s) if i < line - 1 else s for i, s in enumerate(lines))


def _parse_with_recovery(text: str, path: str, start: str):
    """Parse; on a syntax error record it and resume at the next statement line."""
    diagnostics: list[Diagnostic] = []
    current = text
    while True:
        try:
            return _lark().parse(current, start=start), diagnostics
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(path, exc, current))
            if start != "start" or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                return None, diagnostics
            error_line = exc.line if exc.line and exc.line > 0 else len(text.splitlines())
            resume = next((text.count("\n", 0, m.start()) + 1 for m in _STATEMENT_START.finditer(text)
                           if text.count("\n", 0, m.start()) + 1 > error_line), None)
            if resume is None:
                return None, diagnostics
            current = _blank_until(text, resume)


def _transform(tree, path: str):
    builder = ToAst(path)
    try:
        result = builder.transform(tree)
    except VisitError as exc:  # a bug in ToAst, not in the input
        raise exc.orig_exc from exc
    return result, builder.diagnostics


def parse_file(text: str, path: str) -> ast.SourceFile:
    """Parse one file; raises DiagnosticError listing every syntax error."""
    comments: list[ast.Comment] = []
    tree, diagnostics = _parse_with_recovery(text, path, "start")
    if tree is None:
        raise DiagnosticError(diagnostics)
    statements, more = _transform(tree, path)
    diagnostics += more
    if diagnostics:
        raise DiagnosticError(diagnostics)
    for m in re.finditer(r"#[^\n]*", text):
        line = text.count("\n", 0, m.start()) + 1
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
        comments.append(ast.Comment(m.group(0), Span(path, line, col, line, col + len(m.group(0)))))
    comments = [c for c in comments if not _inside_string(text, c.span)]
    return ast.SourceFile(path, tuple(statements), tuple(comments))


def _inside_string(text: str, span: Span) -> bool:
    """Whether a `#` sits inside a string literal on its line."""
    line = text.split("\n")[span.line - 1][: span.col - 1]
    return bool(re.fullmatch(r'([^"]|"(\\.|[^"\\])*")*"(\\.|[^"\\])*', line))


def parse_pattern(text: str, path: str = "<pattern>") -> ast.Pattern:
    """Parse a flow pattern (`SRC -> DST [l4] [l7]`), as used by assert, query and explain."""
    tree, diagnostics = _parse_with_recovery(text, path, "pattern_start")
    if tree is None:
        raise DiagnosticError(diagnostics)
    pattern, more = _transform(tree, path)
    if more:
        raise DiagnosticError(more)
    return pattern


def parse_rule(text: str, path: str = "<rule>") -> ast.Rule:
    """Parse one rule (`allow|deny PATTERN ...`), as used by `query --with`."""
    tree, diagnostics = _parse_with_recovery(text, path, "rule_start")
    if tree is None:
        raise DiagnosticError(diagnostics)
    rule, more = _transform(tree, path)
    if more:
        raise DiagnosticError(more)
    return rule
