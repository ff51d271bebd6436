"""Commands on policy files: check, explain, fmt."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import click

from anyplane.ir.source import DiagnosticError, SourceMap

from .. import api
from ..explain import format_explanation
from ..fmt import format_file
from ..parser import parse_file
from ..pipeline import STDIN, UsageError, import_manifests, read_sources
from .common import EXIT_FAIL, cli, emit_json, files_argument, format_option, handle_errors, load, with_source


@cli.command()
@files_argument
@format_option
@handle_errors
def check(files, output_format) -> None:
    """Parse and check policy FILES (files or directories); exit 1 on errors."""
    compiled = load(list(files))
    p = compiled.program
    summary = {"files": len(compiled.policy.files), "rules": len(p.rules), "entries": len(p.acl.entries),
               "identities": len(p.identities), "routes": len(p.routes.entries), "asserts": len(p.asserts)}
    if output_format == "json":
        emit_json({"ok": True, "diagnostics": [], "summary": summary})
    else:
        click.echo(f"ok: {summary['files']} file(s), {summary['rules']} rules ({summary['entries']} entries), "
                   f"{summary['identities']} identities, {summary['routes']} route entries, "
                   f"{summary['asserts']} asserts")


@cli.command()
@files_argument
@click.option("--flow", "flow_text", required=True,
              help="A flow in pattern syntax, e.g. 'office -> productpage http GET /'.")
@format_option
@handle_errors
def explain(files, flow_text, output_format) -> None:
    """Show the verdict for one FLOW and the rule that decides it."""
    compiled = load(list(files))
    try:
        result = api.explain(compiled, flow_text)
    except DiagnosticError as exc:
        raise with_source(exc, "<flow>", flow_text)
    if output_format == "json":
        emit_json(result)
    else:
        click.echo(format_explanation(result), nl=False)


@cli.command()
@files_argument
@click.option("--check", "check_only", is_flag=True, help="Only report files that would change (exit 1 if any).")
@click.option("--diff", "show_diff", is_flag=True, help="Print a diff instead of rewriting.")
@handle_errors
def fmt(files, check_only, show_diff) -> None:
    """Rewrite policy FILES in canonical form."""
    changed = []
    for path, text in read_sources(list(files)):
        try:
            formatted = format_file(parse_file(text, path))
        except DiagnosticError as exc:
            exc.sources = SourceMap({path: text})
            raise
        if path == STDIN and not (check_only or show_diff):  # a filter: the canonical text on stdout
            click.echo(formatted, nl=False)
            continue
        if formatted == text:
            continue
        changed.append(path)
        if show_diff:
            click.echo("".join(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                                    f"a/{path}", f"b/{path}")), nl=False)
        elif check_only:
            click.echo(f"would reformat {path}")
        else:
            Path(path).write_text(formatted, encoding="utf-8")
            click.echo(f"reformatted {path}")
    if (check_only or show_diff) and changed:
        sys.exit(EXIT_FAIL)


@cli.command(name="import")
@files_argument
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the policy to this file (default: "
                                                                       "standard output).")
@click.option("--workloads", "pods_file", type=click.Path(dir_okay=False), metavar="PODS.yaml",
              help="Write the pods' classes as workloads selected by their labels, and the pods themselves to "
                   "PODS.yaml, the binding (`--bind PODS.yaml`) that gives them addresses.")
@handle_errors
def import_command(files, output, pods_file) -> None:
    """Kubernetes manifests (Namespaces, Pods with addresses, NetworkPolicies; files or directories) as
    an anyplane policy file, each rule commented with the object and line it comes from. Every command
    also reads the manifests directly."""
    from ..binding import write as write_binding
    from ..importers import split

    policy, manifests = split(list(files))
    if policy or not manifests:
        raise UsageError("import reads Kubernetes manifests (*.yaml, *.yml, or directories of them)")
    if pods_file and output and Path(pods_file).resolve() == Path(output).resolve():
        raise UsageError("--workloads writes the pods to a file of their own: give another path than -o")
    _, imported = import_manifests(manifests, workloads=bool(pods_file))
    if pods_file:
        Path(pods_file).write_text(write_binding(imported.binding), encoding="utf-8")
        click.echo(f"wrote {pods_file}: {len(imported.binding)} pods (the binding: --bind {pods_file})", err=True)
    if output:
        Path(output).write_text(imported.text, encoding="utf-8")
        click.echo(f"wrote {output}: {imported.pods} pods, {imported.policies} policies", err=True)
    else:
        click.echo(imported.text, nl=False)
