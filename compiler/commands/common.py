"""What every subcommand shares: the click group, exit codes, error handling, output helpers.

Exit codes: 0 success, 1 invalid policy or failed verification, 2 bad usage.
"""

from __future__ import annotations

import functools
import json
import re
import sys

import click

from anyplane.ir.source import DiagnosticError, SourceMap, render

from .. import api
from ..pipeline import UsageError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anyplane")
def cli() -> None:
    """anyplane: one policy language, compiled to Envoy, eBPF/XDP and P4."""


def emit_json(data) -> None:
    """Print JSON for scripts."""
    click.echo(json.dumps(data, indent=2))


def handle_errors(fn):
    """Turn diagnostics into rendered errors (exit 1) and usage errors into exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        fmt = kwargs.get("output_format", "text")
        try:
            return fn(*args, **kwargs)
        except DiagnosticError as exc:
            if fmt == "sarif":
                emit_json(api.sarif(diagnostics=exc.diagnostics))
            elif fmt == "json":
                emit_json({"ok": False, "diagnostics": [d.to_json() for d in exc.diagnostics]})
            else:
                click.echo(render(exc.diagnostics, getattr(exc, "sources", None) or SourceMap()), err=True, nl=False)
            sys.exit(EXIT_FAIL)
        except UsageError as exc:
            click.echo(f"anyplane: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except api.EngineError as exc:  # toolchain, kernel, Envoy, a push: reported in words
            click.echo(f"anyplane: error: {exc}", err=True)
            sys.exit(EXIT_USAGE if isinstance(exc, api.BadInput) else EXIT_FAIL)
    return wrapper


def with_source(exc: DiagnosticError, name: str, text: str) -> DiagnosticError:
    """Attach an in-memory source (a flow or rule given on the command line) to diagnostics."""
    exc.sources = SourceMap({name: text})
    return exc


format_option = click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
                             show_default=True, help="Output format (json for scripts).")
def _remember_bind(ctx, param, value):
    ctx.meta["anyplane.bind"] = list(value)
    return value


bind_option = click.option(
    "--bind", multiple=True, type=click.Path(exists=False), expose_value=False, callback=_remember_bind,
    help="Pods (Kubernetes YAML, a file or directory; repeatable) that give the policy's workloads their "
         "addresses. Without it, workloads stand unbound: analyses reason over them, and engines that match "
         "addresses refuse them.")


def _remember_namespace(ctx, param, value):
    from ..importers.cluster import NAMESPACE

    if value is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
        raise click.BadParameter(f"{value!r} is not a Kubernetes namespace name")
    NAMESPACE.set(value)  # every command sets it: one run of the CLI, one namespace
    return value


namespace_option = click.option(
    "--namespace", "-n", default=None, expose_value=False, callback=_remember_namespace,
    help="The namespace of manifests' objects that name none (as kubectl apply -n); an object that names "
         "another is an error, as in kubectl.")


def _remember_strict_kinds(ctx, param, value):
    from ..importers.cluster import STRICT_KINDS

    STRICT_KINDS.set(bool(value))
    return value


strict_kinds_option = click.option(
    "--strict-kinds", is_flag=True, expose_value=False, callback=_remember_strict_kinds,
    help="An object of a policy group that decides no traffic between workloads (an Istio Gateway, an Ingress, "
         "a ServiceEntry resolved by DNS) is an error rather than a note.")


def files_argument(fn):
    """FILES (policy files and directories), --bind, --namespace and --strict-kinds."""
    return strict_kinds_option(namespace_option(bind_option(
        click.argument("files", nargs=-1, required=True, type=click.Path())(fn))))


def bound() -> list[str] | None:
    """The --bind files of the command running (None when none)."""
    ctx = click.get_current_context(silent=True)
    return (ctx.meta.get("anyplane.bind") or None) if ctx is not None else None


def load(files, **kw):
    """`pipeline.load` of a command's FILES with its --bind."""
    from ..pipeline import load as load_paths

    return load_paths(list(files), bind=bound(), **kw)


def progress_reporter(label: str):
    """A progress callback drawing a bar on a terminal's stderr (silent otherwise)."""
    if not sys.stderr.isatty():
        return None, lambda: None
    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["bar"].pos)

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
    return update, close


