"""The compile pipeline as a list of stages: read -> parse -> check -> lower -> validate.

    load(["policies/"])  ->  Compiled(policy, symbols, program, sources)

Every stage that finds errors raises `DiagnosticError` with all of them.
`--dump-after STAGE` prints the state after a stage (`parse`: the formatted
AST; `lower`: the IR dump; `project`: the L4 projection).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anyplane.ir import printer, validate
from anyplane.ir.nodes import Assert, Connections, Mtls, Program, Table
from anyplane.ir.project import project_l4
from anyplane.ir.source import DiagnosticError, SourceMap, error, render

from . import ast
from . import place
from .checks import check
from .fmt import format_file, format_pattern
from .lower.endpoints import resolve_endpoints
from .lower.matches import lower_pattern
from .lower.routes import lower_limits, order_routes
from .lower.rules import expand_rules, plaintext_refused
from .parser import parse_file
from .suppress import suppressions
from .values import parse_duration_ms
from .symbols import Symbols

STAGES = ("parse", "check", "lower", "project")
POLICY_SUFFIX = ".ap"


class UsageError(Exception):
    """Bad command-line input (missing file, empty directory): exit code 2."""


@dataclass(frozen=True)
class Compiled:
    """The result of compiling a policy: every intermediate form, for tools that need them."""

    policy: ast.Policy
    symbols: Symbols
    program: Program
    sources: SourceMap
    manifests: tuple = ()  # (path, text) of the Kubernetes manifests imported, if any
    partition: tuple | None = None  # what told the manifests' pods apart (importers.k8s.convert)
    #: the pods of identities that stand for several (importers.k8s.Imported.members): address -> pod
    pods: dict | None = None
    #: how the cluster selects each identity's pods (importers.k8s.Imported.selectors)
    selectors: dict | None = None
    #: the pods that gave the workloads their addresses (compiler/binding.py), if any
    binding: object = None


STDIN = "<stdin>"


def files_under(directory: str, suffixes: tuple[str, ...]) -> list[str]:
    """The files with these suffixes below a directory, sorted. Hidden directories (`.git`, editors'
    state) are not entered, links to directories are not followed, and an entry that resolves to a place
    outside the directory is refused (UsageError) before anything of it is read: a link in a policy
    directory must not make anyplane read, and quote in its errors, a file from elsewhere."""
    root = os.path.realpath(directory)
    found = []
    for here, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.endswith(suffixes) or name.startswith("."):
                continue
            path = os.path.join(here, name)
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise UsageError(f"'{path}' is a link to a file outside '{directory}': refused (copy the file in, "
                                 "or name it on the command line)")
            if os.path.isfile(real):
                found.append(path)
    return sorted(found)


def read_sources(paths: list[str]) -> list[tuple[str, str]]:
    """Files named, and `*.ap` files under directories named, in a stable order; `-` is the policy text
    on standard input (named `<stdin>` in messages)."""
    files: list[str] = []
    stdin = None
    for p in paths:
        if p == "-":
            if stdin is not None:
                raise UsageError("'-' (the policy on standard input) may be given once")
            stdin = sys.stdin.buffer.read()
            files.append(p)
        elif os.path.isdir(p):
            found = files_under(p, (POLICY_SUFFIX,))
            if not found:
                raise UsageError(f"no {POLICY_SUFFIX} files under directory '{p}'")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UsageError(f"no such file or directory: '{p}'")
    out, seen = [], set()
    for f in files:
        if f == "-":
            try:
                out.append((STDIN, stdin.decode("utf-8").removeprefix("\ufeff")))
            except UnicodeDecodeError as exc:
                raise DiagnosticError([error(None, "bad-encoding", f"{STDIN}: not UTF-8 text ({exc.reason})")]) from None
            continue
        real = os.path.realpath(f)
        if real in seen:  # one file named twice (one.ap ./one.ap) is read once
            continue
        seen.add(real)
        try:
            with open(f, encoding="utf-8") as fh:
                out.append((f, fh.read().removeprefix("\ufeff")))  # a byte-order mark is no part of the text
        except UnicodeDecodeError as exc:
            raise DiagnosticError([error(None, "bad-encoding", f"{f}: not UTF-8 text ({exc.reason})")]) from None
        except OSError as exc:
            raise UsageError(f"cannot read '{f}': {exc.strerror}") from None
    return out


def parse_policy(sources: list[tuple[str, str]]) -> ast.Policy:
    """Parse every file, reporting the syntax errors of all of them together."""
    files, diagnostics = [], []
    for path, text in sources:
        try:
            files.append(parse_file(text, path))
        except DiagnosticError as exc:
            diagnostics += exc.diagnostics
    if diagnostics:
        raise DiagnosticError(diagnostics)
    return ast.Policy(tuple(files))


def check_policy(policy: ast.Policy, binding=None) -> Symbols:
    """Run the checks; raise with every error found."""
    symbols, diagnostics = check(policy, binding)
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise DiagnosticError(errors)
    return symbols


def lower_connections(stmts) -> Connections:
    """`stateless`, or the settings of `connections { }` over the defaults."""
    if any(isinstance(s, ast.Stateless) for s in stmts):
        return Connections(stateful=False)
    block = next((s for s in stmts if isinstance(s, ast.Connections)), None)
    if block is None:
        return Connections()
    names = {"tcp": "tcp_s", "tcp-opening": "tcp_opening_s", "tcp-closing": "tcp_closing_s", "udp": "udp_s",
             "icmp": "icmp_s", "other": "other_s"}
    values = {}
    for item in block.items:
        if item.key.text == "max":
            values["max"] = int(item.value.text)
        else:
            values[names[item.key.text]] = parse_duration_ms(item.value.text) // 1000
    return Connections(**values)


def lower_policy(policy: ast.Policy, symbols: Symbols) -> Program:
    """AST -> IR, through the lowering passes in order."""
    identities, endpoints = resolve_endpoints(symbols)
    stmts = policy.statements
    rules, acl = expand_rules([s for s in stmts if isinstance(s, ast.Rule)], symbols, suppressions(policy)[0])
    routes = order_routes([s for s in stmts if isinstance(s, ast.Route)], symbols)
    limits = lower_limits([s for s in stmts if isinstance(s, ast.Limits)])
    default = next((s for s in stmts if isinstance(s, ast.Default)), None)
    asserts = tuple(Assert(s.reachable, lower_pattern(s.pattern, symbols, others=s.only), s.span,
                           format_pattern(s.pattern), s.only)
                    for s in stmts if isinstance(s, ast.Assert))
    mtls = None
    if symbols.mtls is not None:
        mode, domain, stmt = symbols.mtls
        mtls = Mtls(mode, domain, stmt.span)
        if "strict" in symbols.modes.values():
            rule, refused = plaintext_refused(stmt.span, symbols, "mtls strict")
            if refused:
                rules, acl = (rule,) + rules, refused + acl
    program = Program(
        mtls=mtls,
        connections=lower_connections(stmts),
        default=default.verdict.text if default else "deny",
        default_origin=default.span if default else None,
        identities=identities,
        endpoints=endpoints,
        acl=Table("acl", acl),
        routes=Table("routes", routes),
        limits=limits,
        asserts=asserts,
        rules=rules,
    )
    return validate.check(program)


@contextmanager
def _no_gc_pauses():
    """The compiler builds large acyclic structures: cyclic GC passes over them are pure overhead."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


#: Per policy text, the rules of the last program compiled from it with a binding: a later binding of
#: the same policy (pods that came and went) whose rules come out the same gets these very objects, so
#: that an engine tells a change of pods alone by identity, at once (backends/classes.rules_alike).
_BOUND_RULES: dict[tuple, tuple] = {}
_BOUND_KEEP = 4


def _share_rules(sources: list[tuple[str, str]], program: Program) -> Program:
    key = tuple(sources)
    last = _BOUND_RULES.get(key)
    mine = (program.acl, program.rules, program.connections, program.default)
    if last is not None and last == mine:
        program = dataclasses.replace(program, acl=last[0], rules=last[1], connections=last[2])
    else:
        if len(_BOUND_RULES) >= _BOUND_KEEP and key not in _BOUND_RULES:
            _BOUND_RULES.pop(next(iter(_BOUND_RULES)))
        _BOUND_RULES[key] = mine
    return program


def compile_sources(sources: list[tuple[str, str]], dump_after: str | None = None, dump=print,
                    binding=None) -> Compiled:
    """Run the whole pipeline on in-memory sources. `binding` (compiler/binding.py) gives the
    workloads their pods' addresses; without one they stand on placeholders."""
    source_map = SourceMap(dict(sources) | (dict(binding.texts) if binding is not None else {}))
    with _no_gc_pauses():
        compiled = _compile(sources, source_map, dump_after, dump, binding)
    if binding is None:
        return compiled
    from .binding import members

    program = _share_rules(sources, compiled.program)
    return dataclasses.replace(compiled, program=program, binding=binding, pods=members(binding, program))


def _compile(sources, source_map: SourceMap, dump_after: str | None, dump, binding=None) -> Compiled:
    try:
        policy = parse_policy(sources)
        if dump_after == "parse":
            for f in policy.files:
                dump(f"# {f.path}\n{format_file(f)}")
        symbols = check_policy(policy, binding)
        program = lower_policy(policy, symbols)
        unenforceable = place.unenforceable(program)
        if unenforceable:
            raise DiagnosticError(unenforceable)
    except DiagnosticError as exc:
        exc.sources = source_map
        raise
    if dump_after == "lower":
        dump(printer.dump(program))
    elif dump_after == "project":
        dump(printer.dump(project_l4(program)))
    return Compiled(policy, symbols, program, source_map)


def print_notes(notes, sources: SourceMap) -> None:
    """Warnings about the input (a plain YAML scalar Kubernetes reads otherwise than it looks), on stderr."""
    if notes:
        sys.stderr.write(render(notes, sources))


def import_manifests(manifests: list[str], notes=print_notes, partition=(frozenset(), ()), workloads: bool = False):
    """(the manifests' texts, their translation: `importers.k8s.Imported`); errors point into them, and
    warnings go to `notes(diagnostics, sources)`. `partition`, `workloads`: see `importers.k8s.convert`."""
    from .importers.k8s import convert

    texts = []
    for m in manifests:
        try:
            texts.append((m, Path(m).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read '{m}': {exc}") from None
    try:
        imported = convert(texts, partition=partition, workloads=workloads)
    except DiagnosticError as exc:
        exc.sources = SourceMap(dict(texts))
        raise
    notes(imported.notes, SourceMap(dict(texts)))
    return texts, imported


def load(paths: list[str], dump_after: str | None = None, dump=print, partition=None,
         bind: list[str] | None = None) -> Compiled:
    """Read files and directories, then compile them as one policy. Kubernetes manifests among them
    (`*.yaml`, or directories of them) are imported first (compiler/importers): positions in findings,
    explain and diff then point into the manifests. `bind`: files of pods that give the policy's
    workloads their addresses (compiler/binding.py)."""
    from .importers import IMPORTED, relocate, split

    policy_paths, manifests = split(paths)
    sources = read_sources(policy_paths) if policy_paths else []
    if bind:
        from . import binding

        if manifests:
            raise UsageError("--bind gives the workloads of policy files their pods; manifests bring their own")
        return compile_sources(sources, dump_after, dump, binding.read(bind))
    if not manifests:
        return compile_sources(sources, dump_after, dump)
    texts, imported = import_manifests(manifests, partition=partition or (frozenset(), ()))
    try:
        compiled = compile_sources(sources + [(IMPORTED, imported.text)], dump_after, dump)
    except DiagnosticError as exc:
        exc.diagnostics = relocate(list(exc.diagnostics), imported.origins)
        exc.sources.texts.update(dict(texts))
        raise
    compiled.sources.texts.update(dict(texts))
    return dataclasses.replace(compiled, program=relocate(compiled.program, imported.origins), manifests=tuple(texts),
                               partition=imported.partition, pods=imported.members,
                               selectors=imported.selectors)


def load_pair(old: list[str], new: list[str], bind: list[str] | None = None) -> tuple[Compiled, Compiled]:
    """Two versions to compare. Where they are manifests, both are imported telling pods apart by what
    either version's policies read, so that an identity names the same pods on both sides."""
    first = (load(old, bind=bind), load(new, bind=bind))
    parts = [c.partition for c in first]
    if parts[0] is None or parts[1] is None or parts[0] == parts[1]:
        return first
    union = (parts[0][0] | parts[1][0], tuple(dict.fromkeys(parts[0][1] + parts[1][1])))
    return load(old, partition=union), load(new, partition=union)
