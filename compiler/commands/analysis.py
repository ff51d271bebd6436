"""Verification commands: verify, query (with what-if edits), diff."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from anyplane.ir.owners import described
from anyplane.ir.source import Diagnostic, DiagnosticError, Note, render

from .. import api, mapview
from ..api import DEFAULT_FAIL_ON, FINDING_KINDS as KINDS
from ..pipeline import UsageError, load_pair
from .common import (EXIT_FAIL, bind_option, bound, cli, emit_json, files_argument, format_option, handle_errors, load,
                     namespace_option, progress_reporter, strict_kinds_option, with_source)


def _kinds(value: str | None) -> frozenset[str]:
    if value is None:
        return DEFAULT_FAIL_ON
    kinds = frozenset(k.strip() for k in value.split(",") if k.strip())
    unknown = kinds - set(KINDS)
    if unknown:
        raise click.BadParameter(f"unknown kinds {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    return kinds


def _as_diagnostic(f, texts: dict[str, str], program, pods=None) -> Diagnostic:
    notes = [Note(None, f"{s.loc}: {texts.get(s.loc, '')}".rstrip(": ")) for s in f.related]
    if f.witness is not None:
        notes.insert(0, Note(None, f"witness: {described(program, f.witness, pods)}"))
    kind = f"{f.kind}, suppressed" if f.suppressed else f.kind
    return Diagnostic(f.span, f.severity, f.kind, f"[{kind}] {f.message}", tuple(notes))


@cli.command()
@files_argument
@click.option("--format", "output_format", type=click.Choice(["text", "json", "sarif"]), default="text",
              show_default=True, help="Output format (sarif for code-scanning UIs).")
@click.option("--fail-on", "fail_on", metavar="KINDS",
              help=f"Comma list of finding kinds that fail the run [default: {','.join(sorted(DEFAULT_FAIL_ON))}].")
@click.option("--timeout", type=click.IntRange(1), default=20, show_default=True,
              help="Seconds the solver may spend on one question (undecided questions fail).")
@click.option("-v", "--verbose", is_flag=True, help="Also print notes (allow/deny overlaps that priority settles).")
@handle_errors
def verify(files, output_format, fail_on, timeout, verbose) -> None:
    """Check asserts and find dead, redundant and conflicting rules in FILES; exit 1 on errors."""
    kinds = _kinds(fail_on)
    compiled = load(list(files))
    update, close = progress_reporter("verifying")
    try:
        report = api.verify(compiled, kinds, timeout, progress=update)
    finally:
        close()
    if output_format == "json":
        emit_json(report.to_json())
    elif output_format == "sarif":
        emit_json(api.sarif(findings=report.findings))
    else:
        p = compiled.program
        texts = {r.origin.loc: r.text for r in p.rules}
        active = [f for f in report.findings if not f.suppressed]
        suppressed = len(report.findings) - len(active)
        shown = [f for f in report.findings if verbose or (f.severity != "info" and not f.suppressed)]
        click.echo(render([_as_diagnostic(f, texts, p, compiled.pods) for f in shown], compiled.sources), nl=False)
        counts = {sev: sum(f.severity == sev for f in active) for sev in ("error", "warning", "info")}
        hidden = "" if verbose or not (counts["info"] or suppressed) else " (-v to show them)"
        accepted = f", {suppressed} suppressed" if suppressed else ""
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {counts['error']} errors, {counts['warning']} warnings, "
                   f"{counts['info']} notes{accepted}{hidden} ({len(p.rules)} rules, {len(p.asserts)} asserts)")
    if not report.ok:
        sys.exit(EXIT_FAIL)


@cli.command()
@files_argument
@click.argument("pattern")
@click.option("--without", "without", multiple=True, metavar="FILE:LINE",
              help="Evaluate as if the rule at FILE:LINE were removed (repeatable).")
@click.option("--with", "with_rules", multiple=True, metavar="RULE",
              help="Evaluate as if this rule were added, e.g. 'deny office -> db' (repeatable).")
@format_option
@handle_errors
def query(files, pattern, without, with_rules, output_format) -> None:
    """Is some flow of PATTERN allowed by FILES? Prints a witness and its rule, or what blocks it."""
    compiled = load(list(files))
    try:
        result, program = api.query(compiled, pattern, list(without), list(with_rules))
    except DiagnosticError as exc:
        if getattr(exc, "sources", None) is None:
            raise with_source(exc, "<query>", pattern)
        raise
    if output_format == "json":
        out = result.to_json()
        if out["witness"] is not None and compiled.pods:  # the pod an identity of several stands for
            w = result.witness
            for side, address in (("src", w.src), ("dst", w.dst)):
                pod = compiled.pods.get((w.family, address))
                if pod is not None:
                    out["witness"][f"{side}_pod"], out["witness"][f"{side}_pods"] = pod
        emit_json(out)
        return
    if result.reachable is None:
        click.echo(f"reachable: unknown (the solver gave up: {result.reason})")
        sys.exit(EXIT_FAIL)
    texts = {r.origin.loc: r.text for r in program.rules}
    by_id = {r.id: r.text for r in program.rules}
    if result.reachable:
        click.echo("reachable: yes")
        click.echo(f"witness:   {described(program, result.witness, compiled.pods)}")
        rule = result.rule.loc if result.rule else None
        click.echo(f"rule:      {rule}  {by_id.get(result.rule_id, '')}" if rule else "rule:      (the default allows it)")
    else:
        click.echo("reachable: no")
        for s in result.blockers:
            click.echo(f"blocked by {s.loc}  {texts.get(s.loc, '')}")
        if result.default_blocks:
            click.echo(f"blocked by the default ({program.default})")
        reply = result.reply
        if reply is not None and reply.reachable:
            rule = reply.rule.loc if reply.rule else None
            click.echo("as replies: yes (a rule allows the connections they answer)")
            click.echo(f"witness:   {described(program, reply.answer, compiled.pods)}")
            click.echo(f"answers:   {described(program, reply.witness, compiled.pods)}")
            click.echo(f"rule:      {rule}  {by_id.get(reply.rule_id, '')}" if rule else "rule:      (the default allows it)")
        elif reply is not None and reply.reachable is False:
            click.echo("as replies: no (no rule allows a connection they would answer)")


def _at_revision(paths: list[str], rev: str, into: str) -> list[str]:
    """The files and directories `paths` as git revision `rev` holds them, written under `into` at the
    same relative places (UsageError: not in a git work tree, or not in that revision)."""
    import io
    import os
    import subprocess
    import tarfile

    out = []
    for p in paths:
        where = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
        top = subprocess.run(["git", "-C", where, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
        if top.returncode != 0:
            raise UsageError(f"--base: '{p}' is not in a git work tree")
        root = top.stdout.strip()
        rel = os.path.relpath(os.path.realpath(p), os.path.realpath(root))
        archive = subprocess.run(["git", "-C", root, "archive", "--format=tar", rev, "--", rel], capture_output=True)
        if archive.returncode != 0:
            why = archive.stderr.decode(errors="replace").strip().splitlines()
            raise UsageError(f"--base: '{p}' is not in git revision '{rev}' ({why[-1] if why else 'git archive failed'})")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            for member in tar.getmembers():  # files and directories only, inside `into`
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in member.name.split("/"):
                    raise UsageError(f"--base: revision '{rev}' holds '{member.name}', which is not a plain file")
            tar.extractall(into)
        out.append(os.path.join(into, rel))
    return out


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--base", "base", metavar="REV", help="Compare PATHS as git revision REV holds them (a branch, a tag, "
                                                     "a commit) with PATHS as they are now: a pull request's change.")
@click.option("--old", "old_paths", multiple=True, type=click.Path(), help="A file or directory of the old version "
                                                                            "(repeatable).")
@click.option("--new", "new_paths", multiple=True, type=click.Path(), help="A file or directory of the new version "
                                                                            "(repeatable).")
@bind_option
@namespace_option
@strict_kinds_option
@format_option
@handle_errors
def diff(paths, base, old_paths, new_paths, output_format) -> None:
    """What changes between two policy versions; exit 1 if any. `diff OLD NEW` (two files or
    directories), `diff --old A --old B --new C` (several paths a side), or `diff --base REV PATHS...`
    (the policy at a git revision against the working tree)."""
    import tempfile

    if base is not None:
        if old_paths or new_paths or not paths:
            raise UsageError("--base REV takes the PATHS to compare, and no --old or --new")
    elif old_paths or new_paths:
        if paths or not (old_paths and new_paths):
            raise UsageError("--old and --new are given together, each at least once, without other paths")
    elif len(paths) != 2:
        raise UsageError("diff takes OLD and NEW, or --old/--new, or --base REV PATHS")
    with tempfile.TemporaryDirectory(prefix="anyplane-base-") as tmp:
        if base is not None:
            old, new = _at_revision(list(paths), base, tmp), list(paths)
        elif old_paths:
            old, new = list(old_paths), list(new_paths)
        else:
            old, new = [paths[0]], [paths[1]]
        older, newer = load_pair(old, new, bind=bound())
        report = api.diff(older, newer)
        # Positions in the base version read REV:PATH, as git names them.
        shown = (lambda text: text.replace(tmp + "/", f"{base}:")) if base is not None else (lambda text: text)
        _print_diff(report, newer, output_format, shown)
    if report.unknown or report.differs:
        sys.exit(EXIT_FAIL)


def _print_diff(report, newer, output_format, shown) -> None:
    def echo(text: str) -> None:
        click.echo(shown(text))
    if output_format == "json":
        emit_json(json.loads(shown(json.dumps(report.to_json()))))
    else:
        echo(f"relation: {report.relation}")
        for title, classes in (("newly allowed", report.newly_allowed), ("newly denied", report.newly_denied),
                               ("changed", report.changed)):
            echo(f"{title} ({len(classes)}):")
            for c in classes:
                what = f"  [{c.what}: {c.old} -> {c.new}]" if c.what else ""
                if c.described:
                    share = "" if c.described.get("exact") else \
                        "  (all of it)" if c.described["whole"] else "  (part of it: rules above decide the rest)"
                    echo(f"  {c.described['text']}{what}{share}")
                    echo(f"      e.g. {described(newer.program, c.witness, newer.pods)}")
                else:
                    echo(f"  {described(newer.program, c.witness, newer.pods)}{what}")
                echo(f"      old: {c.old_rule or 'the default'}   new: {c.new_rule or 'the default'}")
        if report.connections:
            old, new = (c.removeprefix("connections ") for c in report.connections)
            echo(f"connections changed: {old}")
            echo(f"                  -> {new}")
            if new == "stateless" or old == "stateless":
                echo("  (replies of allowed connections " + ("are no longer let through by themselves)"
                           if new == "stateless" else "now pass without a rule of their own)"))
        if report.truncated:
            echo("(more classes exist; only the first ones are listed)")
        if report.unknown:
            echo(f"the solver gave up ({report.unknown}): the list may be incomplete")


@cli.command(name="map")
@files_argument
@click.option("--diff", "compare", is_flag=True, help="FILES are OLD NEW (each a file or directory): mark the "
                                                          "edges added, removed and changed.")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "csv", "dot", "svg", "html"]),
              default="text", show_default=True,
              help="text, json, csv (an edge a line), dot (Graphviz), svg (drawn by Graphviz) or html (one "
                   "self-contained page).")
@click.option("--restricted", is_flag=True, help="Only the edges some rule decides: leave out the pairs that "
                                                   "nothing but the default lets through.")
@click.option("--no-self", "no_self", is_flag=True, help="Leave out each identity's edge to itself.")
@click.option("--changed", "changed_only", is_flag=True, help="With --diff: only the edges added, removed or changed.")
@click.option("--group", "group", type=click.Choice(["namespace"]), default=None,
              help="Fold the identities of each namespace into one node (ns/NAME), their edges into one: what any "
                   "of them reaches.")
@handle_errors
def map_command(files, compare, output_format, restricted, no_self, changed_only, group) -> None:
    """Who can reach whom: an edge wherever some flow from one identity opens a connection to another,
    with the rules that allow it."""
    if compare and len(files) != 2:
        raise UsageError("map --diff takes two policies: OLD NEW (each a file or a directory)")
    if changed_only and not compare:
        raise UsageError("--changed goes with --diff")
    report, done = progress_reporter("map")
    try:
        if compare:
            old, new = (api.connectivity(c, report) for c in load_pair([files[0]], [files[1]], bind=bound()))
            result = _compare(old, new)
        else:
            result = api.connectivity(load(list(files)), report)
    finally:
        done()
    if group == "namespace":
        result = _by_namespace(result)
    result = _shown_edges(result, restricted, no_self, changed_only)
    if output_format == "json":
        emit_json(result)
    elif output_format == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["source", "destination", "flows", "all flows", "rules", "witness"]
                   + (["change"] if compare else []))
        for e in result["edges"]:
            w.writerow([e["src"], e["dst"], e["label"], "yes" if e["everything"] else "some",
                        "; ".join(e["rules"] + (["default"] if e["default"] else [])), e["witness"]]
                       + ([e["change"]] if compare else []))
        click.echo(out.getvalue(), nl=False)
    elif output_format in ("dot", "svg", "html"):
        click.echo({"dot": mapview.dot, "svg": mapview.svg, "html": mapview.page}[output_format](result), nl=False)
    else:
        _map_text(result, compare)
    if compare and any(e["change"] != "same" for e in result["edges"]):
        sys.exit(EXIT_FAIL)


def _by_namespace(result: dict) -> dict:
    """The map with each namespace's identities folded into one node `ns/NAME` (what has no namespace,
    an address outside the cluster, stays as it is): an edge between two nodes wherever one of the
    first's identities reaches one of the second's, with every rule and flow of the edges it folds."""
    fold = {n["name"]: f"ns/{n['namespace']}" for n in result["nodes"] if n.get("namespace")}
    nodes: dict[str, dict] = {}
    for n in result["nodes"]:
        name = fold.get(n["name"], n["name"])
        if name not in nodes:
            nodes[name] = {"name": name, "kind": "namespace" if n["name"] in fold else n["kind"],
                           **({"identities": []} if n["name"] in fold else {})}
        if n["name"] in fold:
            nodes[name]["identities"].append(n["name"])
            nodes[name].setdefault("pods", []).extend(n.get("pods", []))
    edges: dict[tuple, dict] = {}
    for e in result["edges"]:
        key = (fold.get(e["src"], e["src"]), fold.get(e["dst"], e["dst"]))
        got = edges.get(key)
        if got is None:
            edges[key] = dict(e, src=key[0], dst=key[1], rules=list(e["rules"]), flows=list(e["flows"]),
                              http=list(e["http"]), labels=[e["label"]], folded=1)
            continue
        got["rules"] += [r for r in e["rules"] if r not in got["rules"]]
        got["flows"] += [f for f in e["flows"] if f not in got["flows"]]
        got["http"] += [h for h in e["http"] if h not in got["http"]]
        got["labels"] += [e["label"]] if e["label"] not in got["labels"] else []
        got["default"] = got["default"] or e["default"]
        got["everything"] = got["everything"] or e["everything"]
        got["folded"] += 1
        if "change" in e and e["change"] != got.get("change"):
            got["change"] = "changed"
    for e in edges.values():
        labels = e.pop("labels")
        e["label"] = "any protocol" if e["everything"] else "; ".join(labels)
    return dict(result, nodes=[nodes[k] for k in sorted(nodes)], edges=[edges[k] for k in sorted(edges)], groups=[])


def _shown_edges(result: dict, restricted: bool, no_self: bool, changed_only: bool = False) -> dict:
    """The map with the edges the view leaves out taken away (and said so in `left_out`, with the
    identities every edge touched): with `restricted`, an edge whose every flow only the default lets
    through; with `no_self`, an identity's edge to itself; with `changed_only` (--diff), an edge that
    passes the same in both versions."""
    if not (restricted or no_self or changed_only):
        return result

    def kept(e) -> bool:
        if no_self and e["src"] == e["dst"]:
            return False
        if changed_only and e.get("change") == "same":
            return False
        if restricted:
            versions = [e] + [e[k] for k in ("old", "new") if isinstance(e.get(k), dict)]
            return any(v.get("rules") for v in versions)
        return True
    edges = [e for e in result["edges"] if kept(e)]
    touched = sorted({e["src"] for e in result["edges"]} | {e["dst"] for e in result["edges"]})
    return dict(result, edges=edges, left_out={"edges": len(result["edges"]) - len(edges), "touched": touched,
                                               "restricted": restricted, "self": no_self, "same": changed_only})


def _compare(old: dict, new: dict) -> dict:
    """The new map with every edge marked `added`, `removed` (kept, from the old map), `changed` (other
    protocols, ports or HTTP conditions; `was` is the old label) or `same` (what passes is the same,
    whichever rules now allow it)."""
    before = {(e["src"], e["dst"]): e for e in old["edges"]}
    after = {(e["src"], e["dst"]): e for e in new["edges"]}
    edges = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            edges.append(dict(after[key], change="added"))
        elif key not in after:
            edges.append(dict(before[key], change="removed"))
        else:
            a, b = before[key], after[key]
            same = (a["flows"], a["http"]) == (b["flows"], b["http"])
            edges.append(dict(b, change="same" if same else "changed", was=a["label"]))
    nodes = {n["name"]: n for n in old["nodes"] + new["nodes"]}
    return {"nodes": [nodes[k] for k in sorted(nodes)], "edges": edges, "groups": new["groups"]}


def _map_text(result: dict, compare: bool) -> None:
    mark = {"added": "+ ", "removed": "- ", "changed": "~ ", "same": "  "}
    width = max((len(f"{e['src']} -> {e['dst']}") for e in result["edges"]), default=10)
    for e in result["edges"]:
        how = e["label"] + "".join(f"; {h}" for h in e["http"])
        rules = e["rules"] + (["(the default allows it)" if e["everything"] else "(the default allows some)"]
                              if e["default"] else [])
        lead = mark[e["change"]] if compare else ""
        click.echo(f"{lead}{e['src'] + ' -> ' + e['dst']:<{width}}  {how}")
        for more in rules:
            click.echo(f"{' ' * len(lead)}{'':<{width}}    {more}")
    left = result.get("left_out")
    if left and left["edges"]:
        why = [w for w, on in (("only the default lets through", left["restricted"]),
                               ("from an identity to itself", left["self"]),
                               ("the same in both versions", left["same"])) if on]
        click.echo(f"({left['edges']} edges left out: {', or '.join(why)})")
    if compare:
        counts = {k: sum(1 for e in result["edges"] if e["change"] == k) for k in ("added", "removed", "changed")}
        click.echo(f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed")
        return
    alike = [g for g in result["groups"] if len(g) > 1]
    if alike:
        click.echo("alike (the same connections in and out): " + "; ".join(", ".join(g) for g in alike))
    touched = set(left["touched"]) if left else {e["src"] for e in result["edges"]} | {e["dst"] for e in result["edges"]}
    lonely = sorted({n["name"] for n in result["nodes"]} - touched)
    if lonely:
        click.echo("reaches nothing and is reached by nothing: " + ", ".join(lonely))
    for n in result["nodes"]:
        if n.get("identities"):  # a namespace folded (--group namespace)
            shown = ", ".join(n["identities"][:5]) + (f" and {len(n['identities']) - 5} more"
                                                      if len(n["identities"]) > 5 else "")
            click.echo(f"{n['name']} folds {len(n['identities'])} identities: {shown}")
        elif n.get("pods"):
            shown = ", ".join(n["pods"][:5]) + (f" and {len(n['pods']) - 5} more" if len(n["pods"]) > 5 else "")
            click.echo(f"{n['name']} stands for {len(n['pods'])} pods no policy tells apart: {shown}")


