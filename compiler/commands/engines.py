"""Commands that involve the engines: compile, push, status, replay. They parse options, call
`compiler.api` and print; engines are whatever the registry holds."""

from __future__ import annotations

import os
from pathlib import Path
import sys

import click

from anyplane.ir.source import render

from .. import api
from ..output import write_output
from ..pipeline import STAGES, UsageError
from .common import (EXIT_FAIL, bind_option, bound, cli, emit_json, files_argument, format_option, handle_errors, load,
                     progress_reporter)

#: Above this many files, `compile` lists folders rather than files.
LIST_UP_TO = 40


def _capacity(items: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for item in items:
        where, _, n = item.partition("=")
        if not n.isdigit() or int(n) <= 0:
            raise UsageError(f"--capacity takes PLACE=ENTRIES (e.g. fabric=4096: the switch's acl table size), "
                             f"not '{item}'")
        out[where] = int(n)
    return out


def _addresses(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--xds takes HOST:PORT[,HOST:PORT...], not '{item}'")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def _proof_lines(result, places: list[str]) -> tuple[bool, str]:
    """(proved, what to print) for a composition proof."""
    on = " + ".join(places)
    if result.proved:
        by_rule = [w for w, why in result.refined.items() if not why]
        how = f"; {', '.join(by_rule)} checked rule by rule" if by_rule else ""
        return True, f"proved: {on} together decide exactly what the policy decides ({result.seconds:.2f} s{how})"
    if result.unknown:
        return False, f"anyplane: error: the composition proof is undecided ({result.unknown})"
    cex = result.counterexample
    lines = ["anyplane: error: compiler bug: the engines together do not enforce the policy",
             f"  flow      {cex['flow']}",
             f"  path      {cex['scope']}: {' -> '.join(cex['engines'])}",
             f"  policy    {cex['policy']['verdict']} ({cex['policy']['rule'] or 'default'})"]
    lines += [f"  {name:<9} {d['verdict']} ({d['rule'] or 'default'})" for name, d in cex["engines"].items()]
    lines.append(f"  together  {cex['together']}")
    return False, "\n".join(lines)


def _listing(written: list[str], out_dir: str) -> list[str]:
    if len(written) <= LIST_UP_TO:
        return [f"wrote {path}" for path in written]
    folders: dict[str, int] = {}  # hundreds of sidecars: one line per folder
    for path in written:
        rel = os.path.relpath(path, out_dir).split(os.sep)
        key = os.path.join(out_dir, rel[0]) + (os.sep if len(rel) > 1 else "")
        folders[key] = folders.get(key, 0) + 1
    return [f"wrote {key}" + (f" ({n} files)" if key.endswith(os.sep) else "") for key, n in folders.items()]


@cli.command()
@files_argument
@click.option("-t", "--target", default="ir", show_default=True,
              help="What to emit: ir, an engine (ebpf, envoy, p4, ...), or all (every engine on the paths).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory to write artifacts into.")
@click.option("--dump-after", type=click.Choice(STAGES), help="Print the program after a stage.")
@click.option("--no-src", is_flag=True, help="Leave source locations out of text dumps.")
@click.option("--deployment", "deployment_file", type=click.Path(dir_okay=False),
              help="envoy, all: sidecar sockets, upstream endpoints and per-destination paths (YAML).")
@click.option("--dry-run", is_flag=True, help="envoy: observe the policy (shadow rules) without enforcing it.")
@click.option("--no-range", is_flag=True, help="p4: the target has no range match; ports become ternary entries.")
@click.option("--path", "path_text", help="all: the engines a flow crosses, in order "
              "[default: fabric,kernel,sidecar; per destination: `paths` in the deployment file].")
@click.option("--prefer", type=click.Choice(["early", "late", "everywhere"]), default="early", show_default=True,
              help="all: enforce L3/L4 denies on the first engine on the path that can, the last, or every one.")
@click.option("--capacity", multiple=True, metavar="PLACE=N",
              help="all: the engine at PLACE holds N entries (fabric=N: the switch's acl table); what does not "
                   "fit spills to the next engine.")
@click.option("--no-prove", is_flag=True, help="all: skip the proof that the engines together enforce the policy.")
@click.option("--xds", "xds", metavar="HOST:PORT[,HOST:PORT...]",
              help="envoy: bootstraps that take listeners and clusters from `anyplane serve` (its replicas).")
@click.option("--xds-delta", is_flag=True, help="envoy: with --xds, the incremental flavour of xDS.")
@click.option("--xds-tls", metavar="CERT,KEY,CA",
              help="envoy: with --xds, TLS to the server: the sidecar's client certificate and key, and the CA "
                   "that signs the server's (paths as the sidecars see them); CA alone with --xds-token-file.")
@click.option("--xds-token-file", type=click.Path(dir_okay=False),
              help="envoy: with --xds and --xds-tls, the bootstrap token the sidecars prove their identity with "
                   "(serve --tokens); the bootstraps then hold it, and are written readable by their owner alone.")
@click.option("--ca", "ca_dir", type=click.Path(file_okay=False),
              help="envoy, under mtls: the CA that signs the sidecars' certificates, a directory with ca.pem and "
                   "ca.key (and chain.pem above it, if any) [default: the one a previous compile left in "
                   "OUTPUT/ca, else a new one written there].")
@format_option
@handle_errors
def compile(files, target, out_dir, dump_after, no_src, deployment_file, dry_run, no_range, path_text, prefer,
            capacity, no_prove, xds, xds_delta, xds_tls, xds_token_file, ca_dir, output_format) -> None:
    """Compile policy FILES into artifacts for a target."""
    if target not in api.targets():
        raise UsageError(f"unknown target '{target}'; use one of {', '.join(api.targets())}")
    if (xds_delta or xds_tls or xds_token_file) and not xds:
        raise UsageError("--xds-delta, --xds-tls and --xds-token-file go with --xds HOST:PORT")
    tls = None
    if xds_tls:
        parts = xds_tls.split(",")
        if len(parts) == 1 and parts[0] and xds_token_file:
            tls = {"ca": parts[0]}
        elif len(parts) != 3 or not all(parts):
            raise UsageError("--xds-tls takes CERT,KEY,CA (or CA alone, with --xds-token-file)")
        else:
            tls = dict(zip(("cert", "key", "ca"), parts))
    if xds_token_file:
        if tls is None:
            raise UsageError("--xds-token-file needs --xds-tls: a token sent in the clear is anyone's")
        try:
            token = open(xds_token_file, encoding="utf-8").read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--xds-token-file: cannot read '{xds_token_file}': {exc}") from None
        if len(token) < 32 or not token.isascii() or not token.isprintable():
            raise UsageError("--xds-token-file: a token is at least 32 printable characters")
        tls["token"] = token
    servers = _addresses(xds) if xds else ()
    given = {"deployment": deployment_file is not None, "dry_run": dry_run, "range_match": no_range,
             "xds": bool(xds), "ca": ca_dir is not None}
    if target not in ("ir", "all"):
        reads = api.registry.get(target).options
        extra = [name for name, on in given.items() if on and name not in reads]
        if extra:
            raise UsageError(f"-t {target} takes no {', '.join('--' + n.replace('_', '-') for n in extra)}"
                             .replace("--range-match", "--no-range"))
    elif target == "ir" and any(given.values()):
        raise UsageError("-t ir takes no --deployment, --dry-run, --no-range, --xds or --ca")
    if target != "all" and (path_text is not None or capacity or prefer != "early" or no_prove):
        raise UsageError("--path, --prefer, --capacity and --no-prove apply to -t all")
    options = api.Options(out_dir=out_dir, dry_run=dry_run, range_match=not no_range,
                          deployment=api.deployment(deployment_file) if deployment_file else None,
                          xds=servers, xds_delta=xds_delta, xds_tls=tls, ca=_ca(ca_dir, out_dir))
    compiled = load(list(files), dump_after=dump_after, dump=lambda s: click.echo(s, nl=False))
    if target == "all":
        update, close = progress_reporter("proving")
        tty = sys.stderr.isatty()
        try:
            built = api.compile_paths(compiled, path_text, prefer, _capacity(capacity), options, not no_prove,
                                      progress=update, on_engine=(lambda where, n: click.echo(
                                          f"{where}: {n} rules ...", err=True)) if tty else None)
        finally:
            close()
        out = built.output
        if built.proof is not None:
            proved, text = _proof_lines(built.proof, built.plan.places)
            click.echo(text, err=True)
            if not proved:
                sys.exit(EXIT_FAIL)
    else:
        out = api.compile_target(compiled, target, options, src=not no_src)
        if target != "ir" and api.registry.get(target).reads_back_with:
            import json
            proof = api.prove_export(compiled, target, out)
            out.artifacts.append(api.Artifact("proof.json", json.dumps(proof.to_json(), indent=1) + "\n"))
            proved, text = _proof_lines(proof, [f"{target} (read back through the importer)"])
            click.echo(text.replace(" together decide", " decides"), err=True)
            if not proved:
                sys.exit(EXIT_FAIL)
    written = write_output(out_dir, {a.path: a.data for a in out.artifacts}, target, compiled.sources.digest)
    dead = api.dead_rules(compiled)
    if output_format == "json":
        emit_json({"ok": True, "target": target, "artifacts": written,
                   "report": [r.to_json() for r in out.report],
                   "dead_rules": None if dead is None else [str(f.span) for f in dead]})
    else:
        for line in _listing(written, out_dir):
            click.echo(line)
    _warn_dead(dead, compiled)


def _tokens(path: str) -> dict[str, str]:
    """`TOKEN: SPIFFE_ID` pairs, each token long enough to guess at no better than chance."""
    from anyplane.ir import yaml11
    from anyplane.ir.flow import is_spiffe_id

    try:
        docs, problems = yaml11.load(path, open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokens: cannot read '{path}': {exc}") from None
    data = dict(docs[0]) if len(docs) == 1 and not problems and isinstance(docs[0], dict) else None
    if not data:
        raise UsageError(f"--tokens: '{path}' holds no TOKEN: SPIFFE_ID pairs")
    for token, spiffe in data.items():
        if not isinstance(token, str) or len(token) < 32 or not token.isascii() or not token.isprintable():
            raise UsageError("--tokens: a token is at least 32 printable characters")
        if not isinstance(spiffe, str) or not is_spiffe_id(spiffe):
            raise UsageError(f"--tokens: {str(spiffe)[:80]!r} is not a SPIFFE ID")
    return dict(data)


def _ca(ca_dir: str | None, out_dir: str) -> tuple | None:
    """(certificate, key, chain, whether it is the output's own) of the CA, as PEM bytes: the one given,
    or the one a previous compile wrote into the output; None: a new one is made."""
    from pathlib import Path

    where = Path(ca_dir) if ca_dir is not None else Path(out_dir) / "ca"
    try:
        kept = (where / "ca.key").is_file()
    except OSError:  # a path the system refuses: writing the output says so
        kept = False
    if ca_dir is None and not kept:
        return None
    try:
        cert, key = (where / "ca.pem").read_bytes(), (where / "ca.key").read_bytes()
        chain = (where / "chain.pem").read_bytes() if (where / "chain.pem").is_file() else b""
    except OSError as exc:
        raise UsageError(f"--ca: cannot read the CA in '{where}': {exc.strerror or exc} (it holds ca.pem and "
                         "ca.key)") from None
    return cert, key, chain, ca_dir is None


def _warn_dead(dead, compiled) -> None:
    """Dead rules are compiled like any other, but the user meant something by them: say so."""
    if dead is None:
        click.echo(f"note: {len(compiled.program.rules)} rules: run 'anyplane verify' to find dead rules", err=True)
        return
    texts = {r.origin: r.text for r in compiled.program.rules}
    for f in dead:
        click.echo(f"{f.span}: warning: this rule never decides a flow (rules that take precedence take all its flows): "
                   f"{texts.get(f.span, '')}", err=True)
    if dead:
        click.echo(f"{len(dead)} dead rule(s): 'anyplane verify' says which rules take their flows", err=True)


@cli.command()
@click.argument("files", nargs=-1, type=click.Path())
@bind_option
@click.option("-t", "--target", required=True, help="Which engine to update (ebpf, envoy, p4).")
@click.option("--from", "from_dir", type=click.Path(file_okay=False),
              help="envoy: push what `compile -t envoy` (or -t all) wrote to this directory, after checking its "
                   "manifest, instead of compiling FILES.")
@click.option("--iface", help="ebpf: network interface to attach the XDP program to.")
@click.option("--netns", help="ebpf: named network namespace the interface lives in.")
@click.option("--name", default="default", show_default=True, help="ebpf: name of the classifier instance.")
@click.option("--ingress-only", is_flag=True,
              help="ebpf: judge arriving packets only (a gateway with the program on each interface); by default "
                   "a stateful policy also judges the packets the host sends, so their connections are known.")
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
@click.option("--watch", is_flag=True,
              help="ebpf, p4: keep running, and push again whenever FILES or the --bind pods change (a change of "
                   "pods alone writes only the address entries); stop with Ctrl-C or SIGTERM.")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="With --watch: seconds between looks at the files.")
@format_option
@handle_errors
def push(files, target, from_dir, iface, netns, name, ingress_only, service, xds_dir, admin, deployment_file, dry_run, grpc_addr,
         device_id, election_id, pipeline_config, no_range, watch, interval, output_format) -> None:
    """Make FILES the live policy of a running engine (atomically; the old one stays on failure)."""
    if watch and (target not in ("ebpf", "p4") or from_dir or dry_run):
        raise UsageError("--watch applies to -t ebpf and -t p4 with policy FILES, without --dry-run "
                         "(the sidecars follow files with `anyplane serve`)")
    if bool(files) == bool(from_dir):
        raise UsageError("give the policy FILES, or --from DIR with a compiled output (envoy)")
    if from_dir and (target != "envoy" or deployment_file or dry_run):
        raise UsageError("--from applies to -t envoy, without --deployment and --dry-run (they were applied at compile)")
    if target == "envoy" and not (service and xds_dir):
        raise UsageError("push -t envoy needs --service NAME and --dir XDS_DIR")
    if target != "ebpf" and (iface or netns or ingress_only):
        raise UsageError("--iface, --netns and --ingress-only apply to -t ebpf")
    if target == "ebpf" and (service or xds_dir or admin or deployment_file or dry_run):
        raise UsageError("--service, --dir, --admin, --deployment and --dry-run apply to -t envoy")
    if target == "p4" and not grpc_addr:
        raise UsageError("push -t p4 needs --grpc-addr HOST:PORT")
    if target != "p4" and (grpc_addr or pipeline_config or no_range):
        raise UsageError("--grpc-addr, --pipeline-config and --no-range apply to -t p4")
    if target not in ("ebpf", "envoy", "p4"):
        raise UsageError(f"-t {target} has no push")
    pipeline = None
    if pipeline_config:
        parts = pipeline_config.split(",")
        if len(parts) != 2 or not all(parts):
            raise UsageError("--pipeline-config takes P4INFO,DEVICE_CONFIG")
        pipeline = (parts[0], parts[1])
    if watch:
        kw = dict(grpc_addr=grpc_addr, device_id=device_id, range_match=not no_range, pipeline_config=pipeline,
                  election_id=election_id) if target == "p4" else \
            dict(iface=iface, name=name, netns=netns, egress=not ingress_only)
        _follow(list(files), target, kw, interval, output_format)
        return
    if from_dir:
        result = api.push_compiled(from_dir, service, xds_dir, admin)
    else:
        compiled = load(list(files))
        if target == "p4":
            result = api.push(compiled, "p4", grpc_addr=grpc_addr, device_id=device_id, range_match=not no_range,
                              pipeline_config=pipeline, election_id=election_id, dry_run=dry_run)
        elif target == "envoy":
            deployment = api.deployment(deployment_file)
            if admin is None:
                host, port = deployment.sidecar(service).admin
                admin = f"{host}:{port}"
            result = api.push(compiled, "envoy", service=service, xds_dir=xds_dir, admin=admin,
                              deployment=deployment, dry_run=dry_run)
        else:
            result = api.push(compiled, target, iface=iface, name=name, netns=netns, egress=not ingress_only)
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
        if result.get("connections_kept") is not None:
            click.echo(f"kept {result['connections_kept']} connections across the reload; each is judged again "
                       "under the new policy at its next packet")
    if not output_format == "json" and result.get("binding"):
        held = result["binding"]
        click.echo(f"binding {held['digest']}: {held['pods']} pods"
                   + (f" (generation {held['generation']})" if "generation" in held else ""))


def _follow(files: list[str], target: str, kw: dict, interval: float, output_format: str) -> None:
    """`push --watch`: push, then push again at each change of the files, until interrupted. One line
    per push or failure (JSON with --format json); a failure leaves the target as it was."""
    import json
    import signal
    import time

    def events(kind, detail):
        if output_format == "json":
            if kind == "pushed":
                click.echo(json.dumps({"event": "pushed", **detail}, sort_keys=True, default=str))
            else:
                click.echo(json.dumps({"event": "error", "message": str(detail)}, sort_keys=True))
            return
        stamp = time.strftime("%H:%M:%S")
        if kind == "pushed":
            if target == "p4":
                what = f"{detail['updates']} updates" + (" (endpoint entries only)" if detail.get("endpoints_only") else "")
            else:
                what = f"generation {detail['generation']}" + (" (address tables only)" if detail.get("rebound") else "")
            held = detail.get("binding") or {}
            pods = f", {held['pods']} pods" if held else ""
            click.echo(f"{stamp} pushed: {what}{pods} in {detail['push_s'] * 1000:.1f} ms")
        else:
            message = render(detail.diagnostics, getattr(detail, "sources", None)) \
                if hasattr(detail, "diagnostics") else f"error: {detail}\n"
            click.echo(f"{stamp} not pushed (the target keeps the last policy):\n{message}", err=True, nl=False)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    following = api.Following(files, target, bound(), events, **kw)
    try:
        while True:
            following.check()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        following.close()


@cli.command()
@click.option("-t", "--target", required=True, help="Which engine (ebpf), or xds (a running `anyplane serve`).")
@click.option("--name", default="default", show_default=True, help="ebpf: name of the classifier instance.")
@click.option("--admin", "admin", default="127.0.0.1:18001", show_default=True,
              help="xds: the admin address of `anyplane serve`.")
@click.option("--prove", "prove_files", multiple=True, type=click.Path(), metavar="PATH",
              help="ebpf, p4: policy files (repeatable) the live tables must decide as: they are read from the "
                   "kernel (or the switch), decoded and proved against the policy; exit 1 when they differ.")
@click.option("--grpc-addr", help="p4: the P4Runtime target HOST:PORT to read (with --prove).")
@click.option("--device-id", type=int, default=1, show_default=True, help="p4: the P4Runtime device id.")
@click.option("--no-range", is_flag=True, help="p4: the target has no range match.")
@bind_option
@format_option
@handle_errors
def status(target, name, admin, prove_files, grpc_addr, device_id, no_range, output_format) -> None:
    """Counters per policy rule of a running engine; or every sidecar of `anyplane serve` (-t xds); with
    --prove, whether the live tables decide as a policy."""
    if target != "p4" and (grpc_addr or no_range):
        raise UsageError("--grpc-addr and --no-range apply to -t p4")
    if target == "p4":
        if not (grpc_addr and prove_files):
            raise UsageError("status -t p4 reads a switch's tables back: give --grpc-addr HOST:PORT and --prove POLICY")
        proof = api.prove_live(load(prove_files), "p4", grpc_addr=grpc_addr, device_id=device_id,
                               range_match=not no_range)
        proved, text = _live_proof_lines(proof, prove_files)
        if output_format == "json":
            emit_json({"target": "p4", "grpc_addr": grpc_addr, "proof": dict(proof.to_json(), policy=list(prove_files))})
        else:
            click.echo(text)
        if not proved:
            sys.exit(EXIT_FAIL)
        return
    if target == "xds":
        if prove_files:
            raise UsageError("--prove applies to -t ebpf and -t p4")
        result = api.serve_status(admin)
        if output_format == "json":
            emit_json(result)
        else:
            _xds_status(result)
        return
    if bound() and not prove_files:
        raise UsageError("--bind gives the pods of the --prove policy")
    result = api.status(target, name=name)
    proved = True
    if prove_files:
        proof = api.prove_live(load(prove_files), target, name=name)
        proved, text = _live_proof_lines(proof, prove_files)
        result["proof"] = dict(proof.to_json(), policy=list(prove_files))
    if output_format == "json":
        emit_json(result)
        if not proved:
            sys.exit(EXIT_FAIL)
        return
    held = result.get("binding")
    click.echo(f"classifier '{name}', generation {result['generation']}"
               + (f", binding {held['digest']} ({held['pods']} pods"
                  + (f", generation {held['generation']}" if "generation" in held else "") + ")" if held else ""))
    click.echo(f"{'packets':>12} {'bytes':>14} {'limited':>9}  rule")
    for row in result["rules"]:
        click.echo(f"{row['packets']:>12} {row['bytes']:>14} {row['rate_limited']:>9}  {row['rule']}")
    conns = result.get("connections")
    if conns and conns["stateful"]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(conns["by_protocol"].items())) or "none"
        states = ", ".join(f"{n} {k}" for k, n in sorted(conns["tcp_states"].items()))
        full = 100 * (conns["held"] + conns["expired"]) / conns["max"]
        click.echo(f"connections: {conns['held']} held of {conns['max']} ({kinds}"
                   + (f"; tcp {states}" if states else "") + f"), {conns['expired']} idle past their timeout; "
                   f"table {full:.1f}% full")
        c = conns["counted"]
        click.echo(f"             opened {c['opened']}, replies {c['replies']}, related errors {c['related']}, "
                   f"cut by a push {c['cut']}")
    elif conns:
        click.echo("connections: not tracked (the policy is stateless)")
    if prove_files:
        click.echo(text)
        if not proved:
            sys.exit(EXIT_FAIL)


def _live_proof_lines(result, files) -> tuple[bool, str]:
    """(proved, what to print) for the proof of a running target's tables."""
    policy = " ".join(files)
    if result.proved:
        return True, f"proved: the live tables decide exactly what {policy} decides ({result.seconds:.2f} s)"
    if result.unknown:
        return False, f"anyplane: error: the proof of the live tables is undecided ({result.unknown})"
    cex = result.counterexample
    (engine, got), = cex["engines"].items()
    return False, "\n".join([f"anyplane: error: the live tables do not decide what {policy} decides",
                             f"  flow      {cex['flow']}",
                             f"  policy    {cex['policy']['verdict']} ({cex['policy']['rule'] or 'default'})",
                             f"  {engine:<9} {got['verdict']} ({got['rule'] or 'default'})"])


@cli.command()
@files_argument
@click.option("-t", "--target", required=True, help="Which engine (ebpf).")
@click.option("--flows", "flows_file", type=click.Path(dir_okay=False), help="One flow per line (pattern syntax).")
@click.option("--pcap", "pcap_file", type=click.Path(dir_okay=False), help="A pcap capture (Ethernet).")
@format_option
@handle_errors
def replay(files, target, flows_file, pcap_file, output_format) -> None:
    """Run flows or captured packets through the compiled engine; compare with the policy."""
    if bool(flows_file) == bool(pcap_file):
        raise UsageError("give exactly one of --flows FILE and --pcap FILE")
    rows = api.replay(load(list(files)), target, flows_file, pcap_file)
    mismatches = [r for r in rows if r["verdict"] != r["expected"]]
    if output_format == "json":
        emit_json(rows)
    else:
        for r in rows:
            flag = "" if r["verdict"] == r["expected"] else "   MISMATCH"
            how = {"reply": "reply to ", "related": "error about ", "cut": "cut: "}.get(r.get("as"), "")
            click.echo(f"{r['verdict']:<5} (policy: {r['expected']:<4} {how}{r['rule'] or 'default'})  "
                       f"{r['flow']}{flag}")
        click.echo(f"{len(rows)} packets, {len(mismatches)} mismatches")
    if mismatches:
        sys.exit(EXIT_FAIL)


def _xds_status(result: dict) -> None:
    click.echo(f"version {result['version'] or '(none published)'}: {len(result['nodes'])} sidecars")
    for n in result["nodes"]:
        state = "current" if n["current"] else "behind"
        if not n["connected"]:
            state = "disconnected"
        click.echo(f"  {n['id']:<32} {n['service']:<16} {n['flavour']:<5} {state}")
        for kind, t in n["types"].items():
            line = f"      {kind:<9} sent {t['sent'] or '-'}  acked {t['acked'] or '-'}"
            if t["nacked"]:
                line += f"  NACKED {t['nacked']}: {t['error']}"
            elif t["error"]:
                line += f"  ({t['error']})"
            click.echo(line)
    certs = result.get("certificates")
    if certs:
        click.echo(f"certificates of {certs['trust_domain']}: {len(certs['issued'])} SVIDs valid {certs['ttl_s']} s, "
                   f"re-issued at half of that ({certs['rotations']} so far)")
        for principal, expires in certs["issued"].items():
            click.echo(f"  {principal}  expires {expires}")


def _raise_file_limit(streams: int) -> None:
    """Each stream may be a connection: let the process hold that many sockets (up to the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, streams + 256) if hard != resource.RLIM_INFINITY else streams + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@cli.command()
@files_argument
@click.option("--listen", default="127.0.0.1:18000", show_default=True, help="Where sidecars connect (gRPC).")
@click.option("--admin", "admin", default="127.0.0.1:18001", show_default=True,
              help="HTTP status: GET /status (JSON, what `anyplane status -t xds` reads), GET /ready (503 until "
                   "a version is published).")
@click.option("--deployment", "deployment_file", type=click.Path(dir_okay=False),
              help="Sidecar sockets and upstream endpoints (YAML).")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between looks at FILES for a change.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="Server certificate (PEM): TLS on the xDS channel.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False),
              help="CA (PEM) that signs the sidecars' client certificates (required with --tls-cert); each "
                   "certificate names the service it may ask for (DNS name or spiffe://.../sa/SERVICE).")
@click.option("--once", is_flag=True, help="Publish the policy, serve until interrupted, never look again.")
@click.option("--max-streams", type=click.IntRange(1), default=20_000, show_default=True,
              help="Open xDS streams in all.")
@click.option("--max-streams-per-peer", type=click.IntRange(1), default=256, show_default=True,
              help="Open xDS streams from one address.")
@click.option("--hello-timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds a stream may stay silent before it names its node; then it is closed.")
@click.option("--ca", "ca_dir", type=click.Path(file_okay=False),
              help="Under mtls: the CA that signs the workloads' certificates, a directory with ca.pem and ca.key "
                   "(and chain.pem above it); an empty or new directory gets the CA made for the policy's trust "
                   "domain, for the next start [default: a CA made at start, which lives as long as the server].")
@click.option("--svid-ttl", default="1h", show_default=True,
              help="Under mtls: how long a workload's certificate is valid; it is re-issued at half of that.")
@click.option("--tokens", "tokens_file", type=click.Path(dir_okay=False),
              help="Bootstrap tokens (YAML: TOKEN: SPIFFE_ID): a sidecar that sends one (authorization: Bearer) "
                   "is that identity, as if its client certificate said so; needs --tls-cert and --tls-key "
                   "(--tls-client-ca then optional).")
@handle_errors
def serve(files, listen, admin, deployment_file, interval, tls_cert, tls_key, tls_client_ca, once, max_streams,
          max_streams_per_peer, hello_timeout, ca_dir, svid_ttl, tokens_file) -> None:
    """Serve every sidecar its listeners and clusters over xDS (ADS, state of the world and delta),
    from the policy FILES (a directory or a git checkout), watched: each change is compiled and proved
    before it is published, under the policy's digest as version."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    tls = None
    if tls_cert or tls_key or tls_client_ca:
        if not (tls_cert and tls_key and (tls_client_ca or tokens_file)):
            raise UsageError("TLS takes --tls-cert, --tls-key and --tls-client-ca together (or --tokens instead of "
                             "the client CA)")
        try:
            tls = tuple(open(p, "rb").read() for p in (tls_cert, tls_key)) + \
                ((open(tls_client_ca, "rb").read(),) if tls_client_ca else (None,))
        except OSError as exc:
            raise UsageError(f"cannot read a TLS file: {exc}") from None
    tokens = _tokens(tokens_file) if tokens_file else {}
    if tokens and tls is None:
        raise UsageError("--tokens needs TLS (--tls-cert, --tls-key): a token sent in the clear is anyone's")

    def events(kind, detail):
        stamp = time.strftime("%H:%M:%S")
        if kind == "published":
            click.echo(f"{stamp} published {detail['version']} ({len(detail['services'])} services)", err=True)
        elif kind == "refused":
            _, text = _proof_lines(detail, ["sidecar"])
            click.echo(f"{stamp} not published: {text}", err=True)
        else:
            message = render(detail.diagnostics, getattr(detail, "sources", None)) \
                if hasattr(detail, "diagnostics") else str(detail)
            click.echo(f"{stamp} not published (the sidecars keep the last version):\n{message}", err=True, nl=False)

    from ..values import parse_duration_ms

    try:
        ttl_s = parse_duration_ms(svid_ttl) // 1000
    except ValueError as exc:
        raise UsageError(f"--svid-ttl: {exc}") from None
    if ttl_s < 60:
        raise UsageError("--svid-ttl: a certificate lives at least 1m")
    # A --ca directory without a CA yet: the CA made for the policy's trust domain is written there, and
    # the next start loads it (the sidecars keep trusting the certificates they hold).
    fresh = ca_dir is not None and not (Path(ca_dir) / "ca.key").exists() and not (Path(ca_dir) / "ca.pem").exists()
    ca = _ca(ca_dir, "") if ca_dir is not None and not fresh else None
    _raise_file_limit(max_streams)
    limits = api.xds_limits(streams=max_streams, per_peer=max_streams_per_peer, hello_s=hello_timeout)
    serving = api.Serving(list(files), deployment_file, events, limits, bind=bound(), ca=ca[:3] if ca else None,
                          ca_keep=ca_dir if fresh else None,
                          tokens=tokens,
                          svid_ttl_s=ttl_s)
    serving.warm()  # the proof worker starts while the policy compiles
    serving.check()
    try:
        port = serving.start(listen, tls)
    except OSError as exc:
        raise UsageError(str(exc)) from None

    class Admin(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path = self.path.rstrip("/")
            if path not in ("/status", "", "/ready"):
                self.send_error(404)
                return
            status = serving.status()
            ready = status["version"] is not None
            body = json.dumps(status, indent=1).encode() if path != "/ready" else \
                (b"ready\n" if ready else b"no version published yet\n")
            self.send_response(200 if ready or path != "/ready" else 503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host, _, admin_port = admin.rpartition(":")
    try:
        http = ThreadingHTTPServer((host.strip("[]"), int(admin_port)), Admin)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot serve status on {admin}: {exc}") from None
    threading.Thread(target=http.serve_forever, daemon=True).start()
    click.echo(f"serving xDS on {listen.rpartition(':')[0]}:{port}, status on {admin}", err=True)
    try:
        while True:
            time.sleep(interval)
            if not once:
                serving.check()
            serving.rotate()
    except KeyboardInterrupt:
        pass
    finally:
        http.shutdown()
        serving.stop()
