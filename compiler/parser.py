"""Parse policy text into the AST; turn lark errors into diagnostics.

    text --lark LALR (tree-less, callbacks build the AST)--> ast.SourceFile

The AST is built by callbacks run as the LALR parser reduces, so no parse
tree is materialised; spans come from the first and last token of each node.
The Cython build of lark's parser is used when installed. Syntax errors are
`Diagnostic`s with code `syntax`; after one, parsing resumes at the next line
that starts a statement, so a run reports every broken statement of a file.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

from lark import Lark, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from anyplane.ir.source import Diagnostic, DiagnosticError, Span, error

from . import ast

try:  # the Cython build of lark's lexer and LALR parser: same grammar, same results, faster
    import lark_cython

    _PLUGINS = lark_cython.plugins
except ImportError:  # pragma: no cover - the pure-Python parser is the fallback
    _PLUGINS = None

STATEMENT_KEYWORDS = ("service", "workload", "external", "group", "default", "stateless", "connections", "allow", "deny", "route",
                      "limits", "assert")
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
    "LABEL": "a label such as app=web (or !canary: pods without that key)",
}
_PUNCTUATION = {"LBRACE": "{", "RBRACE": "}", "COMMA": ",", "DOT": ".", "MINUS": "-", "EQUAL": "=",
                "PERCENT": "%", "STAR": "*"}


import lark as _lark_module

_TOKEN_TYPES = (_lark_module.Token,) + ((lark_cython.Token,) if _PLUGINS is not None else ())


def _is_token(x) -> bool:
    return isinstance(x, _TOKEN_TYPES)


def _start(x) -> tuple[int, int]:
    if isinstance(x, _TOKEN_TYPES):
        return x.line, x.column
    span = getattr(x, "span", None)
    if span is not None:
        return span.line, span.col
    return _start(x[0])


def _end(x) -> tuple[int, int]:
    if isinstance(x, _TOKEN_TYPES):
        return x.end_line, x.end_column
    span = getattr(x, "span", None)
    if span is not None:
        return span.end_line, span.end_col
    return _end(x[-1])


class _Methods(NamedTuple):
    words: tuple
    any_method: bool
    span: Span


class _Paths(NamedTuple):
    words: tuple
    span: Span


class _IcmpType(NamedTuple):
    type: object
    code: object
    span: Span


class _Set(NamedTuple):
    refs: tuple
    excluded: tuple
    span: Span


class _Sport(NamedTuple):
    ranges: tuple
    span: Span


class ToAst(Transformer):
    """LALR reduction callbacks: children (tokens and AST nodes) -> AST node with its span.

    One instance serves one parse at a time: `begin(path)` sets the file name.
    """

    def begin(self, path: str) -> None:
        """Start a new file."""
        self.path = path
        self.diagnostics: list[Diagnostic] = []

    # -- helpers ------------------------------------------------------------
    def _s(self, children) -> Span:
        (line, col), (end_line, end_col) = _start(children[0]), _end(children[-1])
        return Span(self.path, line, col, end_line, end_col)

    def _tok(self, tok) -> Span:
        return Span(self.path, tok.line, tok.column, tok.end_line, tok.end_column)

    def _word(self, tok) -> ast.Word:
        return ast.Word(str(tok), self._tok(tok))

    def _num(self, tok) -> ast.Num:
        return ast.Num(int(str(tok)), self._tok(tok))

    def _str(self, tok) -> ast.Str:
        raw = str(tok)
        try:
            value = unescape(raw)
        except ValueError as exc:
            self.diagnostics.append(error(self._tok(tok), "bad-string", str(exc)))
            value = raw[1:-1]
        return ast.Str(value, raw, self._tok(tok))

    @staticmethod
    def _nodes(children):
        return [c for c in children if not _is_token(c)]

    # -- files --------------------------------------------------------------
    def start(self, children):
        return tuple(children)

    def pattern_start(self, children):
        return children[0]

    def rule_start(self, children):
        return children[0]

    # -- endpoints ------------------------------------------------------------
    def service(self, children):
        return ast.Service(self._word(children[1]), tuple(self._nodes(children[2:])), self._s(children))

    def workload(self, children):
        return ast.Service(self._word(children[1]), tuple(self._nodes(children[2:])), self._s(children), "workload")

    def namespace_clause(self, children):
        return ast.NamespaceClause(self._word(children[1]), self._s(children))

    def workload_mtls(self, children):
        return ast.WorkloadMtls(self._word(children[1]), self._s(children))

    def account_clause(self, children):
        return ast.AccountClause(self._word(children[1]), self._s(children))

    def labels_clause(self, children):
        return ast.LabelsClause(tuple(self._word(t) for t in children[1:]), self._s(children))

    def address_clause(self, children):
        return ast.AddressClause(tuple(self._word(t) for t in children[1:]), self._s(children))

    def port_clause(self, children):
        last = self._num(children[2]) if len(children) > 3 else None
        return ast.PortClause(self._num(children[1]), children[-1], self._s(children), last)

    def app_protocol(self, children):
        return self._word(children[0])

    def version_clause(self, children):
        return ast.VersionClause(self._word(children[1]), tuple(self._word(t) for t in children[3:]),
                                 self._s(children))

    def external(self, children):
        return ast.External(self._word(children[1]), tuple(self._nodes(children[2:])), self._s(children))

    def group(self, children):
        members = next((c for c in children if isinstance(c, tuple)), ())
        return ast.Group(self._word(children[1]), members, self._s(children))

    # -- rules --------------------------------------------------------------
    def default(self, children):
        return ast.Default(children[1], self._s(children))

    def verdict(self, children):
        return self._word(children[0])

    def mtls(self, children):
        domain = self._str(children[3]) if len(children) > 3 else None
        return ast.Mtls(self._word(children[1]), domain, self._s(children))

    def peer(self, children):
        tok = children[1]
        return self._word(tok) if tok.type == "PLAINTEXT" else self._str(tok)

    def stateless(self, children):
        return ast.Stateless(self._s(children))

    def connections(self, children):
        return ast.Connections(tuple(c for c in children if isinstance(c, ast.ConnectionItem)), self._s(children))

    def connection_item(self, children):
        return ast.ConnectionItem(self._word(children[0]), self._word(children[1]), self._s(children))

    def rule(self, children):
        verdict, (src, src_except, _), (dst, dst_except, _), *rest = children
        l4 = l7 = None
        rates, priorities = [], []
        for c in rest:
            kind = type(c)
            if kind is ast.L4:
                l4 = c
            elif kind is ast.L7:
                l7 = c
            elif kind is ast.Rate:
                rates.append(c)
            else:
                priorities.append(c)
        pattern = ast.Pattern(src, dst, l4, l7, self._s([src[0], l7 or l4 or dst_except or dst]),
                              src_except, dst_except)
        return ast.Rule(verdict, pattern, tuple(rates), tuple(priorities), self._s(children))

    def rate(self, children):
        count, unit = str(children[1]).split("/")
        burst = self._num(children[3]) if len(children) > 3 else None
        return ast.Rate(int(count), unit, burst, self._s(children))

    def priority(self, children):
        return self._num(children[1])

    def endpoints(self, children):
        return tuple(children)

    members = endpoints

    def ep_name(self, children):
        return ast.EndpointRef("name", self._word(children[0]), None, None, self._s(children))

    def ep_version(self, children):
        return ast.EndpointRef("version", self._word(children[0]), self._word(children[-1]), None,
                               self._s(children))

    def ep_within(self, children):
        return ast.EndpointRef("within", self._word(children[0]), None, None, self._s(children))

    def ep_address(self, children):
        return ast.EndpointRef("address", None, None, self._word(children[0]), self._s(children))

    def ep_any(self, children):
        return ast.EndpointRef("any", None, None, None, self._s(children))

    def l4_ports(self, children):
        kind, *rest = children
        ports = next((c for c in rest if isinstance(c, tuple) and not isinstance(c, _Sport)), ())
        sport = next((c for c in rest if isinstance(c, _Sport)), None)
        return ast.L4(str(kind), tuple(ports), sport.ranges if sport else (), None, None, None,
                      self._s(children))

    def sport(self, children):
        return _Sport(children[1], self._s(children))

    def ports(self, children):
        return tuple(self._nodes(children))

    def port_range(self, children):
        lo = self._num(children[0])
        hi = self._num(children[-1]) if len(children) > 1 else lo
        return ast.PortRange(lo, hi, self._s(children))

    def l4_icmp(self, children):
        icmp_type, icmp_code = children[1][:2] if len(children) > 1 else (None, None)
        return ast.L4(str(children[0]), (), (), icmp_type, icmp_code, None, self._s(children))

    def icmp_type(self, children):
        kind = children[1]
        value = self._num(kind) if kind.type == "INT" else self._word(kind)
        return _IcmpType(value, self._num(children[3]) if len(children) > 3 else None, self._s(children))

    def l4_proto(self, children):
        return ast.L4("proto", (), (), None, None, self._num(children[1]), self._s(children), len(children) > 2)

    def l7(self, children):
        methods = next((c for c in children if isinstance(c, _Methods)), None)
        paths = next((c for c in children if isinstance(c, _Paths)), None)
        host = next((c for c in children if isinstance(c, ast.Str)), None)
        headers = tuple(c for c in children if isinstance(c, ast.HeaderTest))
        return ast.L7(methods.words if methods else (), bool(methods and methods.any_method),
                      paths.words if paths else (), host, headers, self._s(children))

    def methods(self, children):
        if children[0].type == "STAR":
            return _Methods((), True, self._s(children))
        return _Methods(tuple(self._word(t) for t in children), False, self._s(children))

    def paths(self, children):
        return _Paths(tuple(self._word(t) for t in children), self._s(children))

    def host(self, children):
        return self._str(children[1])

    def header(self, children):
        name, test = children[1], children[-1]
        if test.type in ("PRESENT", "ABSENT"):
            return ast.HeaderTest(self._str(name), str(test), None, self._s(children))
        return ast.HeaderTest(self._str(name), "equals", self._str(test), self._s(children))

    # -- traffic management ------------------------------------------------------
    def route(self, children):
        return ast.Route(self._word(children[1]), children[2], tuple(self._nodes(children[3:])),
                         self._s(children))

    def route_to(self, children):
        return ast.RouteTo(tuple(children[1:]), self._s(children))

    def backend(self, children):
        weight = self._num(children[1]) if len(children) > 1 else None
        return ast.BackendRef(self._word(children[0]), weight, self._s(children))

    def route_timeout(self, children):
        return ast.RouteTimeout(self._word(children[1]), self._s(children))

    def route_retry(self, children):
        conds = tuple(self._word(t) for t in children if t.type == "COND")
        per_try = next((self._word(t) for t in children if t.type == "DURATION"), None)
        return ast.RouteRetry(self._num(children[1]), conds, per_try, self._s(children))

    def limits(self, children):
        return ast.Limits(self._word(children[1]), tuple(self._nodes(children[2:])), self._s(children))

    def limit_value(self, children):
        return ast.LimitValue(children[0], self._num(children[1]), self._s(children))

    def limit_key(self, children):
        return self._word(children[0])

    def limit_eject(self, children):
        return ast.LimitEject(self._num(children[1]), self._word(children[3]), self._word(children[5]),
                              self._s(children))

    # -- assertions --------------------------------------------------------------
    def assertion(self, children):
        only = any(_is_token(c) and c.type == "ONLY" for c in children)
        reachable = not only and not any(_is_token(c) and c.type == "NOT" for c in children)
        return ast.Assert(reachable, children[-1], self._s(children), only)

    def endpoint_set(self, children):
        refs = [c for c in children if isinstance(c, tuple)]
        return _Set(refs[0], refs[1] if len(refs) > 1 else (), self._s(children))

    def pattern(self, children):
        (src, src_except, _), (dst, dst_except, _), *rest = children
        l4 = next((c for c in rest if isinstance(c, ast.L4)), None)
        l7 = next((c for c in rest if isinstance(c, ast.L7)), None)
        peer = next((c for c in rest if isinstance(c, (ast.Str, ast.Word))), None)
        return ast.Pattern(src, dst, l4, l7, self._s([src[0], l7 or peer or l4 or dst_except or dst]),
                           src_except, dst_except, peer)


_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def unescape(raw: str) -> str:
    """Decode a string literal's body; raises ValueError on an unknown escape."""
    body = raw[1:-1]
    if "\\" not in body:
        return body
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


@lru_cache(maxsize=1)
def _parser() -> tuple[Lark, ToAst]:
    grammar = resources.files("anyplane.compiler").joinpath("grammar.lark").read_text()
    builder = ToAst()
    options = dict(parser="lalr", lexer="contextual", maybe_placeholders=False, transformer=builder,
                   start=["start", "pattern_start", "rule_start"])
    if _PLUGINS is not None:
        options["_plugins"] = _PLUGINS
    return Lark(grammar, **options), builder


@lru_cache(maxsize=1)
def _checker() -> Lark:
    """The same grammar on lark's pure-Python LALR parser, without a transformer: used only after a
    syntax error, to ask which tokens the parser would really accept there."""
    grammar = resources.files("anyplane.compiler").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=False,
                start=["start", "pattern_start", "rule_start"])


def _acceptable(text: str, start: str, line: int, column: int, expected) -> set[str]:
    """The tokens the parser accepts where it failed. LALR merges the states of `endpoints` (or `l7`)
    in rules, asserts, routes and groups, so its raw expected set names tokens another context would
    take ('{' after a rule's path); the interactive parser tries each one."""
    try:
        _checker().parse(text, start=start)
    except UnexpectedToken as exc:
        if (exc.line, exc.column) == (line, column) and exc.interactive_parser is not None:
            try:
                return set(exc.interactive_parser.accepts()) or set(expected)
            except Exception:  # pragma: no cover - fall back on the raw set
                return set(expected)
    except UnexpectedInput:
        pass
    return set(expected)


def _describe_expected(names) -> str:
    """Human words for a set of terminal names; statement keywords collapse into one phrase."""
    words, keywords, statement = set(), set(), False
    for name in names:
        if name in TERMINAL_WORDS:
            words.add(TERMINAL_WORDS[name])
        elif name in _PUNCTUATION:
            keywords.add(f"'{_PUNCTUATION[name]}'")
        elif name in ("ALLOW", "DENY") or name == "$END":
            continue
        elif name.isupper() and name.replace("_KW", "").lower().replace("_", "-") in STATEMENT_KEYWORDS:
            statement = True
        elif name.isupper() and not name.startswith("__"):
            keywords.add("'" + name.replace("_KW", "").lower().replace("_", "-") + "'")
        elif name.startswith("__ANON"):
            keywords.add("'->'")
    if not statement and {"ALLOW", "DENY"} & set(names):
        keywords |= {"'allow'", "'deny'"}
    ordered = sorted(words) + sorted(keywords) + (["a new statement"] if statement else [])
    if len(ordered) > 1:
        return "one of " + ", ".join(ordered[:-1]) + " or " + ordered[-1]
    return ", ".join(ordered)


def _word_at(text: str, pos: int) -> str:
    m = re.compile(r"[^\s,{}]+").match(text, pos)
    return m.group(0) if m else text[pos:pos + 1]


def _syntax_diagnostic(path: str, exc: UnexpectedInput, text: str, start: str = "start") -> Diagnostic:
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        word = _word_at(text, pos)
        span = Span(path, exc.line, exc.column, exc.line, exc.column + max(1, len(word)))
        if word and (word[0].isalnum() or word[0] in "_-"):
            return error(span, "syntax", f"unexpected '{word}'")
        return error(span, "syntax", f"unexpected character {text[pos]!r}" if pos < len(text) else "unexpected end")
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        span = Span(path, tok.line, tok.column, tok.end_line, tok.end_column)
        expected = _describe_expected(_acceptable(text, start, tok.line, tok.column, exc.expected))
        message = f"unexpected '{tok}'"
        if str(tok) in STATEMENT_KEYWORDS:
            message += " (the statement before it is incomplete)"
        return error(span, "syntax", message + (f", expected {expected}" if expected else ""))
    lines = text.rstrip().splitlines() or [""]
    line, col = len(lines), len(lines[-1]) + 1
    expected = _describe_expected(getattr(exc, "expected", ()) or ())
    return error(Span(path, line, col, line, col + 1), "syntax",
                 "unexpected end of input" + (f", expected {expected}" if expected else ""))


_STATEMENT_START = re.compile(r"^[ \t]*(" + "|".join(STATEMENT_KEYWORDS) + r")\b", re.M)


def _blank_until(text: str, line: int) -> str:
    """The text with every line before `line` blanked, so positions stay put."""
    lines = text.split("\n")
    return "\n".join(" " * len(s) if i < line - 1 else s for i, s in enumerate(lines))


def _parse(text: str, path: str, start: str):
    """Parse; on a syntax error record it and resume at the next statement line.

    Returns (result or None, diagnostics).
    """
    lark, builder = _parser()
    diagnostics: list[Diagnostic] = []
    current = text
    while True:
        builder.begin(path)
        try:
            result = lark.parse(current, start=start)
            return result, diagnostics + builder.diagnostics
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(path, exc, current, start))
            if start != "start" or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                return None, diagnostics
            error_line = exc.line if isinstance(exc.line, int) and exc.line > 0 else len(text.splitlines())
            resume = next((n for n in (text.count("\n", 0, m.start()) + 1 for m in _STATEMENT_START.finditer(text))
                           if n > error_line), None)
            if resume is None:
                return None, diagnostics
            current = _blank_until(text, resume)
        except VisitError as exc:  # a bug in ToAst, not in the input
            raise exc.orig_exc from exc


def _comments(text: str, path: str) -> tuple[ast.Comment, ...]:
    """The `#` comments of a file (not those inside string literals)."""
    out = []
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    line = 0
    for m in re.finditer(r'"(?:\\.|[^"\\\n])*"|#[^\n]*', text):
        if not m.group(0).startswith("#"):
            continue
        while line + 1 < len(line_starts) and line_starts[line + 1] <= m.start():
            line += 1
        col = m.start() - line_starts[line] + 1
        out.append(ast.Comment(m.group(0), Span(path, line + 1, col, line + 1, col + len(m.group(0)))))
    return tuple(out)


def parse_file(text: str, path: str) -> ast.SourceFile:
    """Parse one file; raises DiagnosticError listing every syntax error."""
    statements, diagnostics = _parse(text, path, "start")
    if diagnostics or statements is None:
        raise DiagnosticError(diagnostics)
    return ast.SourceFile(path, statements, _comments(text, path))


def parse_pattern(text: str, path: str = "<pattern>") -> ast.Pattern:
    """Parse a flow pattern (`SRC -> DST [l4] [l7]`), as used by assert, query and explain."""
    pattern, diagnostics = _parse(text, path, "pattern_start")
    if diagnostics or pattern is None:
        raise DiagnosticError(diagnostics)
    return pattern


def parse_rule(text: str, path: str = "<rule>") -> ast.Rule:
    """Parse one rule (`allow|deny PATTERN ...`), as used by `query --with`."""
    rule, diagnostics = _parse(text, path, "rule_start")
    if diagnostics or rule is None:
        raise DiagnosticError(diagnostics)
    return rule
