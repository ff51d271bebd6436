"""The anyplane library: what the command line, tests, benchmarks and CI scripts call.

    from anyplane.compiler import api

    compiled = api.load(["policies/"])                       # parse, check, lower (DiagnosticError)
    out = api.compile_target(compiled, "envoy")              # one engine's artifacts and report
    built = api.compile_paths(compiled, "fabric,kernel,sidecar")  # placement, every engine, the proof
    report = api.verify(compiled)                            # findings, asserts
    answer = api.query(compiled, "internet -> mysql tcp 3306")
    changes = api.diff(api.load(["old/"]), api.load(["new/"]))
    why = api.explain(compiled, "office -> productpage http GET /")

Every function returns the data the CLI prints as JSON (`.to_json()` where it
is an object). Mistakes in the policy raise `DiagnosticError` (with `.sources`
set, so `render` can quote the lines); mistakes in the arguments raise
`UsageError`; an engine that fails raises `EngineError`. docs/api.md has more.
Engines are found through `anyplane.backends.registry` only.
"""

from __future__ import annotations

import dataclasses

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from anyplane.backends import registry
from anyplane.backends.base import Artifact, BadInput, EngineError, Options, Output, RuleReport
from anyplane.backends.deployment import Deployment, DeploymentError, load as load_deployment_file
from anyplane.ir import printer
from anyplane.ir.source import DiagnosticError
from anyplane.verify.result import DEFAULT_FAIL_ON, KINDS as FINDING_KINDS

from . import place
from .explain import explain as explain_flow
from .flows import parse_flow
from .pipeline import Compiled, UsageError, load
from .whatif import edit, query_pattern

if TYPE_CHECKING:
    from anyplane.verify.compose import Composition

__all__ = ["load", "targets", "compile_target", "compile_paths", "Built", "verify", "query", "diff", "explain",
           "connectivity",
           "push", "push_compiled", "status", "replay", "deployment", "sarif", "dead_rules", "Options", "Compiled",
           "UsageError", "DiagnosticError", "EngineError", "BadInput", "registry", "FINDING_KINDS", "DEFAULT_FAIL_ON"]


def targets() -> list[str]:
    """What `compile -t` accepts: the IR, every registered engine, and `all` (every engine on the paths)."""
    return ["ir", *registry.names(), "all"]


def deployment(path: str | None) -> Deployment:
    """A deployment file (sidecar sockets, endpoints, paths); UsageError when it is unreadable or malformed."""
    try:
        return load_deployment_file(path)
    except DeploymentError as exc:
        raise UsageError(str(exc)) from None


def _engine(name: str):
    try:
        return registry.get(name)
    except KeyError:
        raise UsageError(f"unknown target '{name}'; use one of {', '.join(targets())}") from None


def _with_sources(compiled: Compiled, exc: DiagnosticError) -> DiagnosticError:
    if getattr(exc, "sources", None) is None:
        exc.sources = compiled.sources
    return exc


def with_selectors(compiled: Compiled, options: Options) -> Options:
    """Options whose deployment carries how the imported cluster selects its identities' pods, so that
    `-t k8s|cilium|istio` write the cluster's own namespaces and labels (the deployment file's
    `kubernetes.workloads` still wins for the identities it names)."""
    if not getattr(compiled, "selectors", None):
        return options
    dep = options.deployment if isinstance(options.deployment, Deployment) else Deployment()
    kubernetes = dict(dep.kubernetes, selectors=compiled.selectors)
    return replace(options, deployment=replace(dep, kubernetes=kubernetes))


def refuse_unbound(compiled: Compiled, engines) -> None:
    """DiagnosticError at each workload without addresses, when an engine among these matches them."""
    unbound = compiled.program.unbound
    needing = [e.name for e in engines if e.needs_addresses]
    if unbound and needing:
        from anyplane.ir.source import error as diagnostic

        names = ", ".join(f"-t {n}" for n in needing)
        raise _with_sources(compiled, DiagnosticError([
            diagnostic(i.origin, "unbound-workload",
                       f"workload '{i.name}' has no addresses, which {names} match on: bind the workloads to "
                       f"their pods (--bind PODS.yaml, e.g. from kubectl get pods -A -o yaml)") for i in unbound]))


def compile_target(compiled: Compiled, target: str, options: Options = Options(), src: bool = True) -> Output:
    """One target's artifacts: `ir` (ir.json, ir.txt) or a registered engine's."""
    if target == "ir":
        program = compiled.program
        return Output([Artifact("ir.json", printer.to_json(program)),
                       Artifact("ir.txt", printer.dump(program, src=src))])
    engine = _engine(target)
    refuse_unbound(compiled, [engine])
    options = with_selectors(compiled, options)
    try:
        out = engine.emit(compiled.program, options)
    except DiagnosticError as exc:
        raise _with_sources(compiled, exc)
    importer = engine.reads_back_with
    if importer is not None and out.read_back is None:
        from .importers import read_back

        files = {a.path: a.data for a in out.artifacts}
        out.read_back = lambda: read_back(importer, files)
    return out


def prove_export(compiled: Compiled, target: str, out: Output, progress=None):
    """The proof that an exporter's output, read back through its importer, decides exactly what the
    policy decides for every flow to or from a workload (the exporter says which identities are
    workloads; traffic between addresses outside them is no cluster's to decide)."""
    from anyplane.ir import fields as F
    from anyplane.ir.match import Exact, InSet, Match, PrefixMatch
    from anyplane.verify.compose import Scope, prove as prove_composition

    engine = _engine(target)
    back = out.read_back()
    if engine.carries_routes:
        differs = _routes_differ(compiled.program, back, target)
        if differs is not None:
            from anyplane.verify.compose import Composition
            return Composition(False, 0.0, counterexample=differs, engines=[target])
    workloads = tuple(sorted(engine.workloads(compiled.program)))
    if not workloads:
        from anyplane.verify.compose import Composition
        return Composition(True, 0.0, engines=[target])
    to = Match.of({F.DST_ID: InSet(workloads)})
    selves = tuple(Match.of({F.SRC_IP: PrefixMatch(p), F.DST_IP: PrefixMatch(p)}) for p in engine.exempt(compiled.program))
    # TCP and UDP port 0 is reserved: no connection uses it, and Kubernetes' resources cannot name it.
    selves += (Match.of({F.PROTO: InSet((6, 17)), F.DPORT: Exact(0)}),)
    scopes = [Scope("to workloads", to, selves, (target,)),
              Scope("from workloads", Match.of({F.SRC_ID: InSet(workloads)}), (to,) + selves, (target,))]
    # Whole packets between two addresses: NetworkPolicy, Cilium and Istio do not say how a non-first
    # fragment is judged (the network plugin's choice), and a pod's traffic to itself is never judged.
    return prove_composition(compiled.program, {target: back}, scopes, progress=progress, fragments=False,
                             same_address=False)


def _routes_differ(program, back, target: str) -> dict | None:
    """The first route (or limits block) the read-back does not carry as the policy has it, as a
    counterexample (None: routes and limits agree, in precedence order)."""
    from anyplane.ir.printer import format_action, format_breaker, format_match

    def entry_text(e) -> str:
        return f"{format_action(e.action)} :: {format_match(e.match)}"

    mine = [(e.match, e.action) for e in sorted(program.routes.entries, key=lambda e: -e.priority)]
    theirs = [(e.match, e.action) for e in sorted(back.routes.entries, key=lambda e: -e.priority)]
    for k in range(max(len(mine), len(theirs))):
        if k >= len(mine) or k >= len(theirs) or mine[k] != theirs[k]:
            want = sorted(program.routes.entries, key=lambda e: -e.priority)[k] if k < len(mine) else None
            got = sorted(back.routes.entries, key=lambda e: -e.priority)[k] if k < len(theirs) else None
            return {"flow": f"route {k + 1} in precedence order", "scope": "routes", "together": "differs",
                    "policy": {"verdict": entry_text(want) if want else "no route",
                               "rule": str(want.origin) if want else None},
                    "engines": {target: {"verdict": entry_text(got) if got else "no route", "rule": None}}}
    mine_l = {(lim.service, lim.breaker) for lim in program.limits}
    theirs_l = {(lim.service, lim.breaker) for lim in back.limits}
    if mine_l != theirs_l:
        diff = sorted(mine_l ^ theirs_l, key=repr)[0]
        return {"flow": f"limits of {diff[0]}", "scope": "limits", "together": "differs",
                "policy": {"verdict": next((format_breaker(b) for s, b in mine_l if s == diff[0]), "none"),
                           "rule": None},
                "engines": {target: {"verdict": next((format_breaker(b) for s, b in theirs_l if s == diff[0]), "none"),
                                     "rule": None}}}
    return None


@dataclass
class Built:
    """What `compile -t all` made: every engine's artifacts (in folders named after the engines), the
    placement and its report, and the composition proof (None when skipped)."""

    output: Output
    plan: place.Plan
    proof: Composition | None


def compile_paths(compiled: Compiled, path: str | None = None, prefer: str = "early",
                  capacity: dict[str, int] | None = None, options: Options = Options(), prove: bool = True,
                  progress=None, on_engine=None) -> Built:
    """Place the policy on the engines of its paths, emit each engine's share, and prove that together
    they decide exactly what the policy decides. `path`: the engines in order (default: every
    registered place; per destination: the deployment's `paths`). `on_engine(place, rules)` is called
    before each engine compiles; `progress(done, total)` while the proof runs."""
    import json

    program = compiled.program
    refuse_unbound(compiled, [registry.at(p) for p in registry.places()])
    options = with_selectors(compiled, options)
    dep = options.deployment if isinstance(options.deployment, Deployment) else Deployment()
    capacity = dict(capacity or {})
    counted = [p for p in registry.places() if not registry.at(p).capability.sees_http]
    for where in capacity:
        if where not in counted:
            raise UsageError(f"--capacity takes PLACE=ENTRIES for an engine whose entries spill to the next one "
                             f"({', '.join(counted)}), not '{where}'")
    try:
        default_path = place.parse_path(",".join(registry.places()) if path is None else path)
        regions = place.regions(program, default_path, dep.paths, "deployment: paths")
    except place.PathError as exc:
        raise UsageError(str(exc)) from None
    try:
        plan = place.plan(program, regions, prefer, capacity, options)
    except DiagnosticError as exc:
        raise _with_sources(compiled, exc)
    outputs: dict[str, Output] = {}
    for where in plan.places:
        engine, share = registry.at(where), plan.programs[where]
        if on_engine is not None:
            on_engine(where, len(share.rules))
        try:
            outputs[where] = engine.emit(share, replace(options, capacity=capacity.get(where),
                                                        out_dir=os.path.join(options.out_dir, engine.name)))
        except DiagnosticError as exc:
            raise _with_sources(compiled, exc)
    out = Output()
    for where, o in outputs.items():
        out.artifacts += [Artifact(f"{registry.at(where).name}/{a.path}", a.data) for a in o.artifacts]
    capabilities = []
    for where in plan.places:
        declared = registry.at(where).capability.to_json()
        capabilities.append(dict(declared, capacity=capacity.get(where, declared["capacity"])))
    out.artifacts += [Artifact("placement.txt", place.text(plan)),
                      Artifact("placement.json", json.dumps({
                          "prefer": plan.prefer, "places": plan.places,
                          "paths": [{"destination": r.label, "path": list(r.path)} for r in plan.regions],
                          "capabilities": capabilities, "spilled": plan.spilled,
                          "rules": [r.to_json() for r in plan.rows]}, indent=1) + "\n")]
    out.report = [RuleReport("", r.location, r.text, "placed", ",".join(r.placed) or "-") for r in plan.rows]
    proof = None
    if prove and not options.dry_run:
        proof = place.prove(program, plan, options, outputs, progress)
        out.artifacts.append(Artifact("proof.json", json.dumps(proof.to_json(), indent=1) + "\n"))
    return Built(out, plan, proof)


def verify(compiled: Compiled, fail_on=None, timeout_s: int = 20, progress=None):
    """Findings (dead, redundant, conflicting rules, routes) and asserts: a `verify.result.Report`."""
    from anyplane.verify.result import with_severities
    from anyplane.verify.run import verify as verify_program

    # Rules a translation wrote have their anomalies left out below: when every rule comes from the
    # manifests, they are not asked at all.
    yaml_paths = {path for path, _ in compiled.manifests or ()}
    own_rules = not yaml_paths or any(r.origin.file not in yaml_paths for r in compiled.program.rules)
    report = verify_program(compiled.program, fail_on or DEFAULT_FAIL_ON, progress=progress,
                            timeout_ms=timeout_s * 1000, rules=own_rules)
    if not compiled.manifests:
        return report
    from .importers.redundancy import findings  # what each NetworkPolicy and rule adds

    # The anomalies of the generated rules are the translation's; the policies' and rules' own are these.
    kept = tuple(f for f in report.findings
                 if not (f.kind in TRANSLATION_KINDS and f.span is not None and f.span.file in yaml_paths))
    from anyplane.verify.diff import diff
    from anyplane.verify.result import Finding

    from anyplane.verify.context import Analysis
    from anyplane.verify.diff import changed_without

    analyses: dict = {}  # one Analysis of the import answers what each of its rules adds

    def same_without(program, entries) -> bool:
        if analyses.get("program") is not program:
            analyses.update(program=program, analysis=Analysis(program, timeout_ms=timeout_s * 1000))
        return changed_without(analyses["analysis"], entries) is None

    found = findings(list(compiled.manifests), lambda a, b: not diff(a, b, limit=1).differs, same_without)
    extra = with_severities([Finding("redundant", "warning", span, message, related=related)
                             for span, message, related in found],
                            fail_on or DEFAULT_FAIL_ON)
    return dataclasses.replace(report, findings=tuple(sorted(kept + tuple(extra), key=lambda f: (f.span or ("",), f.kind))))


#: Findings on rules generated from manifests that `verify` leaves out: the manifest-level redundancy
#: findings (compiler/importers/redundancy.py) say what they would, in the manifests' terms.
TRANSLATION_KINDS = frozenset({"dead", "redundant", "conflict"})


#: `compile` looks for dead rules in policies up to this many rules (beyond, `verify` is the tool).
LINT_MAX_RULES = 2000


def dead_rules(compiled: Compiled, max_rules: int = LINT_MAX_RULES) -> list | None:
    """The dead rules' findings (not those the policy accepts), or None when the policy has more than
    `max_rules` rules and the question is left to `verify`."""
    if len(compiled.program.rules) > max_rules:
        return None
    report = verify(compiled, frozenset({"dead"}))
    return [f for f in report.findings if f.kind == "dead" and not f.suppressed]


def query(compiled: Compiled, pattern: str, without: list[str] = (), with_rules: list[str] = ()):
    """(reachability result, the program asked): can some flow of the pattern get through, with rules
    removed (`without`, FILE:LINE) or added (`with_rules`) for the question only."""
    from anyplane.verify.context import Analysis
    from anyplane.verify.reach import reachability, reply_reachability

    matches = query_pattern(compiled, pattern)
    try:
        program = edit(compiled, list(without), list(with_rules)) if (without or with_rules) else compiled.program
    except DiagnosticError as exc:
        exc.sources = compiled.sources
        exc.sources.texts.update({f"<with:{n}>": t for n, t in enumerate(with_rules, start=1)})
        raise
    result = reachability(Analysis(program, extra=list(matches)), matches)
    if result.reachable is False:
        result = replace(result, reply=reply_reachability(program, matches))
    return result, program


def connectivity(compiled: Compiled, progress=None) -> dict:
    """Who can reach whom: `{"nodes": [{"name", "kind", "pods" (an identity of several pods: which), "namespace"
    (a workload's, or an imported cluster's identity's)}], "edges": [{"src", "dst", "rules", "default",
    "everything", "witness", "flows", "label", "http"}], "groups": [[name, ...]], "pairs": {"all", "asked"}}`
    (see verify/connectivity.py; `asked`: the pairs the solver was asked about, one per class of alike pairs)."""
    from anyplane.verify.connectivity import connectivity as graph_of, groups

    g = graph_of(compiled.program, progress)
    members: dict[str, list[str]] = {}  # an identity that stands for several pods: which
    if compiled.pods:
        from anyplane.ir.owners import ownership

        o = ownership(compiled.program)
        for (family, address), (pod, _) in compiled.pods.items():
            members.setdefault(o.owner(family, address), []).append(pod)
    spaces = {name: c["namespace"] for name, c in (compiled.selectors or {}).items()}  # an imported cluster's
    spaces.update({i.name: i.selector.namespace for i in compiled.program.identities if i.selector is not None})
    return {"nodes": [{"name": n, "kind": g.nodes[n]["kind"], **({"pods": sorted(members[n])} if n in members else {}),
                       **({"namespace": spaces[n]} if n in spaces else {})}
                      for n in sorted(g.nodes)],
            "edges": [dict(src=s, dst=d, **g.edges[s, d]) for s, d in sorted(g.edges)],
            "groups": groups(g), "pairs": {"all": g.graph["pairs"], "asked": g.graph["asked"]}}


def diff(old: Compiled, new: Compiled):
    """Classes of flows newly allowed, newly denied or changed between two policies: a `DiffReport`."""
    from anyplane.verify.diff import diff as diff_programs

    return diff_programs(old.program, new.program)


def explain(compiled: Compiled, flow: str, path: str = "<flow>") -> dict:
    """The verdict of one flow (pattern syntax), its deciding rule, route, limits and the L4 verdict."""
    engines = [(e.name, e.place, e.capability.state, e.capability.protocols) for e in registry.engines() if e.place]
    return explain_flow(compiled.program, parse_flow(flow, compiled.symbols, compiled.program, path), engines)


def push(compiled: Compiled, target: str, **kw) -> dict:
    """Make the policy live on a running engine (the keyword arguments are the engine's own)."""
    engine = _engine(target)
    if not engine.offers("push"):
        raise UsageError(f"-t {target} has no push")
    refuse_unbound(compiled, [engine])
    held = {"digest": compiled.binding.digest, "pods": len(compiled.binding.pods)} \
        if compiled.binding is not None else None
    if engine.keeps_binding:  # the engine remembers which pods its policy holds
        kw["binding"] = held
    result = engine.push(compiled.program, **kw)
    if held is not None and result.get("binding") is None:  # an engine that keeps it says more (its generation)
        result["binding"] = held
    return result


def push_compiled(out_dir: str, service: str, xds_dir: str, admin: str | None = None) -> dict:
    """Push a sidecar's xDS files from a compiled output, once its manifest vouches for every file."""
    from .output import read_manifest

    data = read_manifest(out_dir)
    engine = registry.serving()
    prefix = {engine.name: "", "all": f"{engine.name}/"}.get(data.get("target"))
    if prefix is None:
        raise UsageError(f"'{out_dir}' holds -t {data.get('target')} output, not the sidecars' "
                         f"(-t {engine.name} or -t all)")
    return engine.push_files(out_dir, prefix, service, xds_dir, admin, data["files"])


def status(target: str, **kw) -> dict:
    """Counters of a running engine."""
    engine = _engine(target)
    if not engine.offers("status"):
        raise UsageError(f"-t {target} has no status")
    return engine.status(**kw)


def prove_live(compiled: Compiled, target: str, **kw):
    """The proof that a running target decides what the policy decides: what it holds now, read from it
    and decoded as IR, against the policy (its L4 projection for an engine below HTTP)."""
    from anyplane.ir.project import project_l4
    from anyplane.verify.compose import prove as prove_composition

    engine = _engine(target)
    if not engine.offers("read_live"):
        raise UsageError(f"-t {target} cannot be read back while it runs")
    program = compiled.program
    policy = program if engine.capability.sees_http else project_l4(program)
    live = engine.read_live(program, **kw)
    return prove_composition(policy, {engine.name: live}, sources={engine.name: policy})


def replay(compiled: Compiled, target: str, flows_file: str | None = None, pcap: str | None = None) -> list[dict]:
    """Flows (one per line, pattern syntax) or a capture through an engine, beside the policy's verdicts."""
    engine = _engine(target)
    if not engine.offers("replay"):
        raise UsageError(f"-t {target} has no replay")
    refuse_unbound(compiled, [engine])
    if (flows_file is None) == (pcap is None):
        raise UsageError("give exactly one of --flows FILE and --pcap FILE")
    flows = None
    if flows_file is not None:
        try:
            lines = open(flows_file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read '{flows_file}': {getattr(exc, 'strerror', None) or exc}") from None
        flows = []
        for n, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                flows.append(parse_flow(text, compiled.symbols, compiled.program, path=f"{flows_file}:{n}"))
            except DiagnosticError as exc:
                from anyplane.ir.source import SourceMap

                exc.sources = SourceMap({f"{flows_file}:{n}": text})
                raise
    return engine.replay(compiled.program, flows=flows, pcap=pcap)


def sarif(findings=None, diagnostics=None) -> dict:
    """A SARIF 2.1.0 log of verification findings, or of the diagnostics of a policy that does not compile."""
    from importlib.metadata import version

    from anyplane.verify.sarif import diagnostics_to_sarif, to_sarif

    if diagnostics is not None:
        return diagnostics_to_sarif(list(diagnostics), version("anyplane"))
    return to_sarif(list(findings or ()), version("anyplane"))


def prove_sidecars(compiled: Compiled, progress=None):
    """The proof that the sidecars, read back, decide what the policy decides for every flow they see
    (TCP to a TCP or HTTP port of a service: one scope per service); the rest is other engines' to
    decide (`compile -t all`)."""
    from anyplane.ir import fields as F
    from anyplane.ir.match import Exact, InSet, Match
    from anyplane.verify.compose import Composition, Scope, prove as prove_composition

    engine = registry.serving()
    program = compiled.program
    scopes = []
    for svc in engine.services(program):
        ident = program.identity(svc)
        ports = tuple(sorted(p.number for p in ident.ports if p.protocol != "udp"))
        owners = tuple(sorted(i.name for i in program.identities if i.service == svc))
        scopes.append(Scope(f"sidecar of {svc}", Match.of({F.PROTO: Exact(6), F.DST_ID: InSet(owners),
                                                           F.DPORT: InSet(ports)}), (), (engine.name,)))
    if not scopes:
        return Composition(True, 0.0, engines=[engine.name])
    return prove_composition(program, {engine.name: engine.read_back(program, Options())}, scopes, progress=progress)


def _prove_program(program):
    """prove_sidecars of a program alone (what the proof worker, compiler/prover.py, is sent)."""
    return prove_sidecars(Compiled(None, None, program, None))


#: Policies of at least so many entries are proved in the worker process, beside building the messages.
PARALLEL_PROOF_ABOVE = 2000


def fingerprint(paths: list[str], more: list[str] = ()) -> str:
    """A digest of every file a policy is read from (policy files and manifests under `paths`, and
    `more`: bindings, a deployment file), names and contents: what a watcher compares."""
    import hashlib
    from .importers import split
    from .importers.k8s import MANIFEST_SUFFIXES
    from .pipeline import POLICY_SUFFIX, files_under

    h = hashlib.sha256()
    policy, manifests = split(list(paths))
    files = []
    for p in policy + manifests + list(more):
        files += files_under(p, (POLICY_SUFFIX,) + MANIFEST_SUFFIXES) if os.path.isdir(p) else [p]
    for f in files:
        h.update(f.encode() + b"\0")
        try:
            h.update(Path(f).read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


class Following:
    """`anyplane push --watch`: a running kernel or switch follows the policy files and the pods that
    bind its workloads. Each time the files change (`check`, called every few seconds): load, then push;
    a policy that fails to load or to push is reported (`events("error", exc)`) and the target keeps
    the last one it took. A push the target failed (it is down, or another controller is primary) is
    tried again at the next check, its error said once. The engine's follower keeps what it can between pushes (the switch one
    primary session and its memory of the target, the kernel its last tables), so a change of pods alone
    writes only the address entries that changed. `events("pushed", result)` hears of each push."""

    def __init__(self, paths: list[str], target: str, bind: list[str] | None = None, events=None, **kw):
        self.paths, self.bind = list(paths), list(bind or [])
        self.engine = _engine(target)
        if not self.engine.offers("push"):
            raise UsageError(f"-t {target} has no push")
        self.follower = self.engine.follow(**kw)
        self.events = events or (lambda kind, detail: None)
        self.seen: str | None = None
        self.failing: str | None = None  # what the target said when the last push failed (said once)

    def check(self) -> bool:
        """Push the files' policy if they changed, or if the last push failed at the target; True when it
        went out."""
        seen = fingerprint(self.paths, self.bind)
        if seen == self.seen:
            return False
        self.seen = seen
        try:
            compiled = load(self.paths, bind=self.bind)
            refuse_unbound(compiled, [self.engine])
            extra = {}
            if self.engine.keeps_binding:
                extra["binding"] = {"digest": compiled.binding.digest, "pods": len(compiled.binding.pods)} \
                    if compiled.binding is not None else None
            started = time.perf_counter()
            result = self.follower.push(compiled.program, extra)
            result["push_s"] = round(time.perf_counter() - started, 4)
        except EngineError as exc:  # the target failed (down, or another controller is primary): tried again
            self.seen = None
            if str(exc) != self.failing:
                self.events("error", exc)
            self.failing = str(exc)
            return False
        except (DiagnosticError, UsageError) as exc:  # the policy: tried again once the files change
            self.events("error", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the target from following the files
            self.events("error", InternalError(exc))
            return False
        self.failing = None
        self.events("pushed", result)
        return True

    def close(self) -> None:
        self.follower.close()


class Serving:
    """`anyplane serve`: an xDS server for the sidecars, fed from policy files it watches.

    Each time the files change (checked every `interval` seconds): load, place on the sidecars,
    prove, and only then publish, as the version named by the policy's digest (and the deployment's).
    A policy that fails to compile or to prove is reported and not published: the sidecars keep the
    last good version. `events(kind, detail)` hears about it ("published", "refused", "error").
    """

    def __init__(self, paths: list[str], deployment_file: str | None = None, events=None, limits=None,
                 bind: list[str] | None = None, ca: tuple | None = None, svid_ttl_s: int | None = None,
                 tokens: dict | None = None, ca_keep: str | None = None):
        self.paths, self.deployment_file = list(paths), deployment_file
        self.bind = list(bind or [])  # pods that give the workloads their addresses: watched as well
        self.plane = registry.serving().control_plane(limits)
        # under mtls: the workloads' certificates over SDS (a CA made here is kept in `ca_keep`)
        self.plane.certify(ca, svid_ttl_s, tokens, ca_keep)
        self.events = events or (lambda kind, detail: None)
        self.seen: str | None = None
        self.version: str | None = None
        self._prover = None  # a worker process that proves large policies while this one builds (warm())
        self.parallel_above = PARALLEL_PROOF_ABOVE

    def warm(self) -> None:
        """Start the proof worker (compiler/prover.py): a large policy's proof then runs on another core
        while this process builds the sidecars' messages."""
        if self._prover is None or not self._prover.alive():
            from .prover import Worker

            self._prover = Worker()

    def _proof(self, compiled: Compiled):
        """Start the proof (in the worker when there is one and the policy is large); returns the function
        that waits for it. A worker that fails is dropped, and the proof made here."""
        if self._prover is not None and len(compiled.program.acl.entries) >= self.parallel_above:
            from .prover import WorkerError

            waiting = self._prover.prove(compiled.program)

            def result():
                try:
                    return waiting()
                except WorkerError:
                    self._prover.stop()
                    self._prover = None
                    return prove_sidecars(compiled)
            return result
        return lambda: prove_sidecars(compiled)

    def _fingerprint(self) -> str:
        return fingerprint(self.paths, self.bind + ([self.deployment_file] if self.deployment_file else []))

    def check(self) -> bool:
        """Publish the files' policy if it changed and proves; True when a new version went out."""
        import hashlib

        fingerprint = self._fingerprint()
        if fingerprint == self.seen:
            return False
        self.seen = fingerprint
        try:
            compiled = load(self.paths, bind=self.bind)
            dep = deployment(self.deployment_file) if self.deployment_file else None
            dep_text = Path(self.deployment_file).read_bytes() if self.deployment_file else b""
            version = "anyplane-" + hashlib.sha256(compiled.sources.digest.encode() + dep_text).hexdigest()[:16]
            proving = self._proof(compiled)
            try:
                snap = self.plane.prepare(compiled.program, dep, version)
            finally:
                proof = proving()  # always collected: the worker answers each program it is sent
        except (DiagnosticError, UsageError, EngineError) as exc:
            self.events("error", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug in a check must not take the fleet's server down
            self.events("error", InternalError(exc))
            return False
        if not proof.proved:
            self.events("refused", proof)
            return False
        published = self.plane.publish(snap)
        self.version = version
        self.events("published", published)
        return True

    def start(self, listen: str, tls=None) -> int:
        self.warm()
        return self.plane.start(listen, tls)

    def rotate(self) -> bool:
        """Re-issue certificates past half their life (call it often: it only signs what is due)."""
        return self.plane.rotate()

    def status(self) -> dict:
        return self.plane.status()

    def stop(self) -> None:
        self.plane.stop()
        if self._prover is not None:
            self._prover.stop()
            self._prover = None


def xds_limits(**kw):
    """Limits of the sidecars' xDS server (`backends/envoy/ads.py` Limits): streams in all and per peer,
    seconds a stream may stay silent before it names its node."""
    return registry.serving().control_plane_limits(**kw)


class InternalError(Exception):
    """An unexpected failure while checking a policy version: reported, and the version not published."""

    def __init__(self, cause: BaseException):
        import traceback

        where = traceback.extract_tb(cause.__traceback__)[-1:] if cause.__traceback__ else []
        at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
        super().__init__(f"internal error: {type(cause).__name__}: {str(cause)[:300]}{at} (please report it)")


def serve_status(admin: str) -> dict:
    """What a running `anyplane serve` reports on its admin address (HOST:PORT)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        raise UsageError(f"no anyplane serve answers at {admin}: {exc}") from None
