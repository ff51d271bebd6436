"""Commands that involve the engines: compile, push, status, replay."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import yaml

from anyplane.backends.base import Output
from anyplane.ir import printer
from anyplane.ir.nodes import Program
from anyplane.ir.source import DiagnosticError

from ..flows import parse_flow
from ..pipeline import STAGES, UsageError, load
from .common import EXIT_FAIL, cli, emit_json, files_argument, format_option, handle_errors, progress_reporter, \
    read_manifest, with_source, write_output


def _ir(program: Program, no_src: bool) -> Output:
    from anyplane.backends.base import Artifact

    return Output([Artifact("ir.json", printer.to_json(program)), Artifact("ir.txt", printer.dump(program, src=not no_src))])


def _engine(target: str):
    """The backend module for a target (imported when used: each pulls its own toolchain)."""
    if target == "ebpf":
        from anyplane.backends.ebpf import engine
        return engine
    if target == "envoy":
        from anyplane.backends.envoy import engine
        return engine
    if target == "p4":
        from anyplane.backends.p4 import engine
        return engine
    raise UsageError(f"unknown target '{target}'")


TARGETS = ("ir", "ebpf", "envoy", "p4", "all")
ENGINE_AT = {"fabric": "p4", "kernel": "ebpf", "sidecar": "envoy"}
# Failures an engine reports in words (toolchain, kernel, Envoy, deployment file): no traceback.
ENGINE_ERRORS = ("LoadError", "CompileError", "EnvoyError", "DeploymentError", "P4Error")


def _deployment(path):
    from anyplane.backends.envoy import deployment

    try:
        return deployment.load(path)
    except deployment.DeploymentError as exc:
        raise UsageError(str(exc)) from None


def _engine_error(exc: Exception) -> None:
    click.echo(f"anyplane: error: {exc}", err=True)
    sys.exit(EXIT_FAIL)


#: Above this many files, `compile` lists folders rather than files.
LIST_UP_TO = 40


def _capacity(items: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for item in items:
        place, _, n = item.partition("=")
        if place not in ("fabric", "kernel") or not n.isdigit() or int(n) <= 0:
            raise UsageError("--capacity takes fabric=ENTRIES (the switch's acl table size) or kernel=ENTRIES "
                             f"(the classifier's entries), not '{item}'")
        out[place] = int(n)
    return out


def _all(compiled, path_text, prefer: str, capacity: dict[str, int], deployment_file, dry_run: bool,
         no_range: bool, prove: bool) -> Output:
    """Every engine on the paths, each with the program placed on it, the placement report and the proof."""
    import json

    from anyplane.backends.base import Artifact, RuleReport
    from anyplane.backends.p4.pipeline import Features

    from . import placement

    program = compiled.program
    deployment = _deployment(deployment_file)
    try:
        path = placement.parse_path("fabric,kernel,sidecar" if path_text is None else path_text)
        regions = placement.regions(program, path, deployment.paths,
                                    f"{deployment_file}: paths" if deployment_file else "paths")
    except placement.PathError as exc:
        raise UsageError(str(exc)) from None
    try:
        plan = placement.plan(program, regions, prefer, capacity, not no_range)
    except DiagnosticError as exc:
        exc.sources = compiled.sources
        raise
    outputs = {}
    for where in plan.places:
        engine, sub = _engine(ENGINE_AT[where]), plan.programs[where]
        if sys.stderr.isatty():
            click.echo(f"{where}: {len(sub.rules)} rules ...", err=True)
        try:
            if where == "sidecar":
                outputs[where] = engine.emit(sub, deployment, ".", dry_run)
            elif where == "fabric":
                outputs[where] = engine.emit(sub, Features(range_match=not no_range,
                                                           acl_size=capacity.get("fabric", Features().acl_size)))
            else:
                outputs[where] = engine.emit(sub)
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ not in ENGINE_ERRORS:
                raise
            _engine_error(exc)
    out = Output()
    for where, o in outputs.items():
        out.artifacts += [Artifact(f"{ENGINE_AT[where]}/{a.path}", a.data) for a in o.artifacts]
    capabilities = []
    for w in plan.places:
        declared = _engine(ENGINE_AT[w]).CAPABILITY.to_json()
        capabilities.append(dict(declared, capacity=capacity.get(w, declared["capacity"])))
    out.artifacts += [Artifact("placement.txt", placement.text(plan)),
                      Artifact("placement.json", json.dumps({
                          "prefer": plan.prefer, "places": plan.places,
                          "paths": [{"destination": r.label, "path": list(r.path)} for r in plan.regions],
                          "capabilities": capabilities, "spilled": plan.spilled,
                          "rules": [r.to_json() for r in plan.rows]}, indent=1) + "\n")]
    out.report = [RuleReport("", r.location, r.text, "placed", ",".join(r.placed) or "-") for r in plan.rows]
    if prove and not dry_run:
        update, close = progress_reporter("proving")
        try:
            result = placement.prove(program, plan, not no_range, outputs, update)
        finally:
            close()
        out.artifacts.append(Artifact("proof.json", json.dumps(result.to_json(), indent=1) + "\n"))
        on = " + ".join(plan.places)
        if result.proved:
            by_rule = [w for w, why in result.refined.items() if not why]
            how = f"; {', '.join(by_rule)} checked rule by rule" if by_rule else ""
            click.echo(f"proved: {on} together decide exactly what the policy decides "
                       f"({result.seconds:.2f} s{how})", err=True)
        elif result.unknown:
            click.echo(f"anyplane: error: the composition proof is undecided ({result.unknown})", err=True)
            sys.exit(EXIT_FAIL)
        else:
            cex = result.counterexample
            lines = ["anyplane: error: compiler bug: the engines together do not enforce the policy",
                     f"  flow      {cex['flow']}",
                     f"  path      {cex['scope']}: {' -> '.join(cex['engines'])}",
                     f"  policy    {cex['policy']['verdict']} ({cex['policy']['rule'] or 'default'})"]
            lines += [f"  {name:<9} {d['verdict']} ({d['rule'] or 'default'})" for name, d in cex["engines"].items()]
            lines.append(f"  together  {cex['together']}")
            click.echo("\n".join(lines), err=True)
            sys.exit(EXIT_FAIL)
    return out


@cli.command()
@files_argument
@click.option("-t", "--target", type=click.Choice(TARGETS), default="ir", show_default=True, help="What to emit.")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory to write artifacts into.")
@click.option("--dump-after", type=click.Choice(STAGES), help="Print the program after a stage.")
@click.option("--no-src", is_flag=True, help="Leave source locations out of text dumps.")
@click.option("--deployment", "deployment_file", type=click.Path(dir_okay=False),
              help="envoy: sidecar sockets and upstream endpoints (YAML).")
@click.option("--dry-run", is_flag=True, help="envoy: observe the policy (shadow rules) without enforcing it.")
@click.option("--no-range", is_flag=True, help="p4: the target has no range match; ports become ternary entries.")
@click.option("--path", "path_text", help="all: the engines a flow crosses, in order "
              "[default: fabric,kernel,sidecar; per destination: `paths` in the deployment file].")
@click.option("--prefer", type=click.Choice(["early", "late", "everywhere"]), default="early", show_default=True,
              help="all: enforce L3/L4 denies on the first engine on the path that can, the last, or every one.")
@click.option("--capacity", multiple=True, metavar="fabric=N|kernel=N",
              help="all: the switch's acl table (or the kernel's classifier) holds N entries; what does not fit "
                   "spills to the next engine.")
@click.option("--no-prove", is_flag=True, help="all: skip the proof that the engines together enforce the policy.")
@format_option
@handle_errors
def compile(files, target, out_dir, dump_after, no_src, deployment_file, dry_run, no_range, path_text, prefer,
            capacity, no_prove, output_format) -> None:
    """Compile policy FILES into artifacts for a target."""
    if (deployment_file or dry_run) and target not in ("envoy", "all"):
        raise UsageError("--deployment and --dry-run apply to -t envoy and -t all")
    if no_range and target not in ("p4", "all"):
        raise UsageError("--no-range applies to -t p4 and -t all")
    if target != "all" and (path_text or capacity or prefer != "early" or no_prove):
        raise UsageError("--path, --prefer, --capacity and --no-prove apply to -t all")
    capacities = _capacity(capacity)
    compiled = load(list(files), dump_after=dump_after, dump=lambda s: click.echo(s, nl=False))
    if target == "ir":
        out = _ir(compiled.program, no_src)
    elif target == "all":
        out = _all(compiled, path_text, prefer, capacities, deployment_file, dry_run, no_range, not no_prove)
    else:
        try:
            if target == "envoy":
                out = _engine(target).emit(compiled.program, _deployment(deployment_file), out_dir, dry_run)
            elif target == "p4":
                from anyplane.backends.p4.pipeline import Features

                out = _engine(target).emit(compiled.program, Features(range_match=not no_range))
            else:
                out = _engine(target).emit(compiled.program)
        except DiagnosticError as exc:
            exc.sources = compiled.sources
            raise
        except Exception as exc:  # noqa: BLE001 - toolchain and kernel errors are reported, not traced
            if type(exc).__name__ not in ENGINE_ERRORS:
                raise
            _engine_error(exc)
    written = write_output(out_dir, {a.path: a.data for a in out.artifacts}, target, compiled.sources.digest)
    if output_format == "json":
        emit_json({"ok": True, "target": target, "artifacts": written,
                   "report": [r.to_json() for r in out.report]})
    elif len(written) <= LIST_UP_TO:
        for path in written:
            click.echo(f"wrote {path}")
    else:  # hundreds of sidecars: one line per folder
        folders: dict[str, int] = {}
        for path in written:
            rel = os.path.relpath(path, out_dir).split(os.sep)
            key = os.path.join(out_dir, rel[0]) + (os.sep if len(rel) > 1 else "")
            folders[key] = folders.get(key, 0) + 1
        for key, n in folders.items():
            click.echo(f"wrote {key}" + (f" ({n} files)" if key.endswith(os.sep) else ""))


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@click.option("-t", "--target", type=click.Choice(["ebpf", "envoy", "p4"]), required=True, help="Which engine to update.")
@click.option("--from", "from_dir", type=click.Path(file_okay=False),
              help="envoy: push what `compile -t envoy` (or -t all) wrote to this directory, after checking its "
                   "manifest, instead of compiling FILES.")
@click.option("--iface", help="ebpf: network interface to attach the XDP program to.")
@click.option("--netns", help="ebpf: named network namespace the interface lives in.")
@click.option("--name", default="default", show_default=True, help="ebpf: name of the classifier instance.")
@click.option("--service", help="envoy: the service whose sidecar to update.")
@click.option("--dir", "xds_dir", type=click.Path(file_okay=False), help="envoy: the sidecar's watched xDS directory.")
@click.option("--admin", help="envoy: the sidecar's admin address HOST:PORT (default: from the deployment).")
@click.option("--deployment", "deployment_file", type=click.Path(dir_okay=False),
              help="envoy: sidecar sockets and upstream endpoints (YAML).")
@click.option("--dry-run", is_flag=True,
              help="envoy: push shadow rules (observe, do not enforce); p4: print the write, send nothing.")
@click.option("--grpc-addr", help="p4: the P4Runtime target HOST:PORT.")
@click.option("--device-id", type=int, default=1, show_default=True, help="p4: the P4Runtime device id.")
@click.option("--election-id", type=int, default=1, show_default=True, help="p4: the election id (low 64 bits).")
@click.option("--pipeline-config", help="p4: P4INFO,DEVICE_CONFIG files to set the pipeline first.")
@click.option("--no-range", is_flag=True, help="p4: the target has no range match.")
@format_option
@handle_errors
def push(files, target, from_dir, iface, netns, name, service, xds_dir, admin, deployment_file, dry_run, grpc_addr,
         device_id, election_id, pipeline_config, no_range, output_format) -> None:
    """Make FILES the live policy of a running engine (atomically; the old one stays on failure)."""
    if bool(files) == bool(from_dir):
        raise UsageError("give the policy FILES, or --from DIR with a compiled output (envoy)")
    if from_dir and (target != "envoy" or deployment_file or dry_run):
        raise UsageError("--from applies to -t envoy, without --deployment and --dry-run (they were applied at compile)")
    if target == "envoy" and not (service and xds_dir):
        raise UsageError("push -t envoy needs --service NAME and --dir XDS_DIR")
    if target == "ebpf" and (service or xds_dir or admin or deployment_file or dry_run):
        raise UsageError("--service, --dir, --admin, --deployment and --dry-run apply to -t envoy")
    if target == "p4" and not grpc_addr:
        raise UsageError("push -t p4 needs --grpc-addr HOST:PORT")
    if target != "p4" and (grpc_addr or pipeline_config or no_range):
        raise UsageError("--grpc-addr, --pipeline-config and --no-range apply to -t p4")
    pipeline = None
    if pipeline_config:
        parts = pipeline_config.split(",")
        if len(parts) != 2 or not all(parts):
            raise UsageError("--pipeline-config takes P4INFO,DEVICE_CONFIG")
        pipeline = (parts[0], parts[1])
    compiled = load(list(files)) if files else None
    try:
        if from_dir:
            result = _push_compiled(from_dir, service, xds_dir, admin)
        elif target == "p4":
            from anyplane.backends.p4 import push as p4_push
            from anyplane.backends.p4.pipeline import Features

            result = p4_push.push(compiled.program, grpc_addr, device_id, Features(range_match=not no_range),
                                  pipeline, (0, election_id), dry_run)
        elif target == "envoy":
            from anyplane.backends.envoy import push as envoy_push

            deployment = _deployment(deployment_file)
            if admin is None:
                host, port = deployment.sidecar(service).admin
                admin = f"{host}:{port}"
            result = envoy_push.push(compiled.program, service, xds_dir, admin, deployment, dry_run)
        else:
            result = _engine(target).push(compiled.program, iface, name, netns)
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ not in ENGINE_ERRORS:
            raise
        _engine_error(exc)
    if output_format == "json":
        emit_json(result)
    elif target == "p4":
        if result["dry_run"]:
            click.echo(result["write_request"], nl=False)
            click.echo(f"# dry run: {result['updates']} updates, nothing sent", err=True)
        elif result["updates"] == 0:
            click.echo(f"{grpc_addr} already holds this policy ({result['entries']} acl entries)")
        else:
            click.echo(f"wrote {result['updates']} updates to {grpc_addr} device {device_id} "
                       f"({result['inserted']} inserted, {result['modified']} modified, {result['deleted']} deleted; "
                       f"{result['atomicity']}) in {result['seconds'] * 1000:.0f} ms")
    elif target == "envoy":
        mode = " (dry run: shadow rules only)" if result["dry_run"] else ""
        click.echo(f"sidecar of '{service}' runs {result['version']}{mode}: {result['listeners']} listeners, "
                   f"{result['clusters']} clusters, confirmed in {result['seconds'] * 1000:.0f} ms")
    else:
        how = "loaded the program and " if result["reloaded"] else ""
        where = f" on {iface}" if iface else ""
        click.echo(f"{how}switched '{name}'{where} to generation {result['generation']}: "
                   f"{result['entries']} entries in {result['seconds'] * 1000:.1f} ms")


def _push_compiled(out_dir: str, service: str, xds_dir: str, admin: str | None) -> dict:
    """Push a sidecar's xDS files from a compiled output, once its manifest vouches for every file."""
    from anyplane.backends.envoy import push as envoy_push

    data = read_manifest(out_dir)
    prefix = {"envoy": "", "all": "envoy/"}.get(data.get("target"))
    if prefix is None:
        raise UsageError(f"'{out_dir}' holds -t {data.get('target')} output, not the sidecars' (-t envoy or -t all)")
    names = {kind: f"{prefix}{service}/xds/{kind}" for kind in ("lds.yaml", "cds.yaml")}
    if not all(n in data["files"] for n in names.values()):
        raise UsageError(f"'{out_dir}' has no sidecar for service '{service}'")
    if admin is None:
        try:
            boot = yaml.safe_load((Path(out_dir) / f"{prefix}{service}/bootstrap.yaml").read_text())
            sock = boot["admin"]["address"]["socket_address"]
            admin = f"{sock['address']}:{sock['port_value']}"
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            raise UsageError("give --admin HOST:PORT: the output has no bootstrap naming the admin address") from None
    files = {kind: (Path(out_dir) / name).read_text(encoding="utf-8") for kind, name in names.items()}
    return envoy_push.push_files(files, service, xds_dir, admin)


@cli.command()
@click.option("-t", "--target", type=click.Choice(["ebpf"]), required=True, help="Which engine.")
@click.option("--name", default="default", show_default=True, help="Name of the classifier instance.")
@format_option
@handle_errors
def status(target, name, output_format) -> None:
    """Counters per policy rule of a running engine."""
    try:
        result = _engine(target).status(name)
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ != "LoadError":
            raise
        _engine_error(exc)
    if output_format == "json":
        emit_json(result)
        return
    click.echo(f"classifier '{name}', generation {result['generation']}")
    click.echo(f"{'packets':>12} {'bytes':>14} {'limited':>9}  rule")
    for row in result["rules"]:
        click.echo(f"{row['packets']:>12} {row['bytes']:>14} {row['rate_limited']:>9}  {row['rule']}")


@cli.command()
@files_argument
@click.option("-t", "--target", type=click.Choice(["ebpf"]), required=True, help="Which engine.")
@click.option("--flows", "flows_file", type=click.Path(dir_okay=False), help="One flow per line (pattern syntax).")
@click.option("--pcap", "pcap_file", type=click.Path(dir_okay=False), help="A pcap capture (Ethernet).")
@format_option
@handle_errors
def replay(files, target, flows_file, pcap_file, output_format) -> None:
    """Run flows or captured packets through the compiled engine; compare with the policy."""
    if bool(flows_file) == bool(pcap_file):
        raise UsageError("give exactly one of --flows FILE and --pcap FILE")
    compiled = load(list(files))
    engine = _engine(target)
    from anyplane.backends.ebpf import packet

    if flows_file:
        frames = []
        try:
            lines = open(flows_file, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read '{flows_file}': {exc.strerror}") from None
        for n, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                flow = parse_flow(text, compiled.symbols, compiled.program, path=f"{flows_file}:{n}")
            except DiagnosticError as exc:
                raise with_source(exc, f"{flows_file}:{n}", text)
            frames.append(packet.frame(flow.without_http()))
    else:
        try:
            frames = packet.read_pcap(pcap_file)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
    try:
        rows = engine.replay(compiled.program, frames)
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ not in ("LoadError", "CompileError"):
            raise
        _engine_error(exc)
    mismatches = [r for r in rows if r["verdict"] != r["expected"]]
    if output_format == "json":
        emit_json(rows)
    else:
        for r in rows:
            flag = "" if r["verdict"] == r["expected"] else "   MISMATCH"
            click.echo(f"{r['verdict']:<5} (policy: {r['expected']:<4} {r['rule'] or 'default'})  {r['flow']}{flag}")
        click.echo(f"{len(rows)} packets, {len(mismatches)} mismatches")
    if mismatches:
        sys.exit(EXIT_FAIL)
