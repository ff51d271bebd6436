"""Workloads' addresses: a binding (the pods of the moment), or placeholders the analyses stand on.

    workload web { namespace shop  labels app=web  port 8080 http }

A workload is the pods of a namespace that carry its labels. Which addresses those pods have is no
part of the policy: it changes every time a pod starts. `--bind FILE` reads them from Kubernetes
YAML (Pods as `kubectl get pods -o yaml` prints them; workload controllers with an `anyplane.io/v1`
Addresses document, as the importer reads them): each pod's addresses become its workload's, and a
pod that two workloads select is an error (identities are disjoint). Pods no workload selects stay
outside the policy's names (only address rules and `any` see them).

Without a binding, workload k (in name order, from 1) stands on 240.k.0/24 (within 240.0.0.0/4, which
no host uses) and 100::k:0:0/96 (within 100::/64, the discard prefix): `check`, `verify`, `query`,
`diff` and `map` reason over the workloads as they are, every pod of one alike. A written CIDR that
covers a whole range (`0.0.0.0/0`, `::/0`) holds every workload's pods, any other holds none: the
answers are the pods' answers for every binding where that is so. No engine ever sees a placeholder:
the engines that match addresses refuse an unbound workload, and addresses the policy writes may not
lie inside those ranges while one is unbound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from anyplane.ir.addr import Prefix
from anyplane.ir.source import Diagnostic, DiagnosticError, Note, SourceMap, Span, error

#: The ranges placeholders are cut from.
RESERVED = (Prefix(4, 240 << 24, 4), Prefix(6, 0x0100 << 112, 64))
MAX_WORKLOADS = 1 << 20  # 240.0.0.0/4 holds this many /24s

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def placeholders(k: int) -> tuple[Prefix, Prefix]:
    """The placeholder prefixes of the k-th workload (1-based)."""
    return Prefix(4, (240 << 24) | (k << 8), 24), Prefix(6, (0x0100 << 112) | (k << 32), 96)


def reserved(p: Prefix) -> bool:
    """Whether a prefix lies inside a placeholder range (and is smaller): it would name some unbound
    workloads' stand-ins and not others. A prefix that covers a whole range (`0.0.0.0/0`) holds every
    workload's stand-ins, as it holds every pod."""
    return any(p.family == r.family and r.covers(p) and p.length > r.length for r in RESERVED)


def namespace_problem(text: str) -> str | None:
    """Why a namespace name is not one Kubernetes takes (None if it is)."""
    if not _DNS_LABEL.fullmatch(text):
        return (f"'{text}' is not a Kubernetes namespace name (at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit)")
    return None


def label_problem(text: str) -> tuple[str, str, str | None]:
    """(key, value, why it is not a label Kubernetes takes, or None) for `key=value`."""
    key, _, value = text.partition("=")
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return key, value, f"label key prefix '{prefix}' is not a DNS subdomain (lowercase, at most 253 characters)"
    if not _LABEL_NAME.fullmatch(name):
        return key, value, (f"label key name '{name}' is not one Kubernetes takes (at most 63 letters, digits, "
                            "'-', '_' and '.', starting and ending with a letter or digit)")
    if value and not _LABEL_NAME.fullmatch(value):
        return key, value, (f"label value '{value}' is not one Kubernetes takes (at most 63 letters, digits, "
                            "'-', '_' and '.', starting and ending with a letter or digit; or empty)")
    return key, value, None


@dataclass(frozen=True)
class BoundPod:
    """A pod of the binding: where it is, its labels, its addresses, and where the file says so."""

    namespace: str
    name: str
    labels: dict
    prefixes: tuple[Prefix, ...]
    span: Span
    account: str = "default"  # its service account (the identity its certificate names under mtls)


@dataclass(frozen=True)
class Binding:
    """The pods (and their addresses) that bind a policy's workloads."""

    pods: tuple[BoundPod, ...]
    texts: tuple[tuple[str, str], ...]  # (path, text) of each file, for messages

    @property
    def sources(self) -> SourceMap:
        return SourceMap(dict(self.texts))

    @property
    def digest(self) -> str:
        """What the pods' addresses are, as a short digest (which binding a target holds)."""
        import hashlib

        h = hashlib.sha256()
        for pod in sorted(self.pods, key=lambda p: (p.namespace, p.name)):
            h.update(f"{pod.namespace}/{pod.name} {sorted(pod.labels.items())} {list(map(str, pod.prefixes))}\n"
                     .encode())
        return h.hexdigest()[:16]


def read(paths: list[str]) -> Binding:
    """The pods of these Kubernetes YAML files (UsageError: unreadable; DiagnosticError: malformed, or
    holding policies rather than pods)."""
    import ipaddress

    from .importers.cluster import Reader, span_of_object
    from .pipeline import UsageError, files_under

    files: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            found = files_under(p, (".yaml", ".yml"))
            if not found:
                raise UsageError(f"--bind: no .yaml files under directory '{p}'")
            files += found
        else:
            files.append(p)
    texts = []
    for f in files:
        try:
            texts.append((f, Path(f).read_text(encoding="utf-8").removeprefix("\ufeff")))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--bind: cannot read '{f}': {exc}") from None
    reader = Reader()
    for path, text in texts:
        reader.read(path, text)
    pods = reader.pods + reader.workload_pods()
    errors = list(reader.errors)
    for kind, found in (("NetworkPolicy", reader.policies), ("admin policy", reader.admin),
                        ("Cilium policy", reader.cilium), ("AuthorizationPolicy", reader.istio),
                        ("VirtualService or DestinationRule", reader.routing)):
        for path, obj in found:
            errors.append(error(span_of_object(path, obj), "bind",
                                f"a binding gives pods and their addresses; this {kind} is policy (import it "
                                "as a policy file, without --bind)"))
    if errors:
        exc = DiagnosticError(errors)
        exc.sources = SourceMap(dict(texts))
        raise exc
    out = []
    for p in pods:
        nets = [ipaddress.ip_network(n) for n in p.prefixes] or [ipaddress.ip_network(a)
                                                                 for a in (p.address, *p.others)]
        out.append(BoundPod(p.namespace, p.name, dict(p.labels),
                            tuple(Prefix(n.version, int(n.network_address), n.prefixlen) for n in nets), p.span,
                            p.account))
    return Binding(tuple(out), tuple(texts))


def assign(workloads: list, binding: Binding | None, accounts: dict | None = None) -> tuple[dict, list[Diagnostic]]:
    """{workload name: [(prefix, span)]}: each workload's pods' addresses, or its placeholders.
    `workloads`: (name, namespace, {key: value}, name span[, label keys its pods lack]) in name order. `accounts` (under mtls): the
    service account each workload's pods must run as, since their certificates name it."""
    diags: list[Diagnostic] = []
    if binding is None:
        if len(workloads) >= MAX_WORKLOADS:
            diags.append(error(workloads[-1][3], "too-many-workloads",
                               f"at most {MAX_WORKLOADS - 1} workloads stand unbound; bind them (--bind)"))
            return {}, diags
        return {name: [(p, span) for p in placeholders(k)]
                for k, (name, _, _, span, *_) in enumerate(workloads, start=1)}, diags
    out: dict[str, list] = {name: [] for name, *_ in workloads}
    by_namespace: dict[str, list] = {}
    for name, ns, labels, span, *rest in workloads:
        by_namespace.setdefault(ns, []).append((name, labels, span, rest[0] if rest else ()))
    for pod in binding.pods:
        mine = [(name, span) for name, labels, span, absent in by_namespace.get(pod.namespace, ())
                if all(pod.labels.get(k) == v for k, v in labels.items()) and not any(k in pod.labels for k in absent)]
        if len(mine) > 1:
            diags.append(error(pod.span, "bind",
                               f"pod {pod.namespace}/{pod.name} is selected by workload '{mine[0][0]}' and by "
                               f"'{mine[1][0]}': a pod belongs to one workload",
                               *(Note(span, f"workload '{name}'") for name, span in mine[:2])))
            continue
        if mine:
            name = mine[0][0]
            want = (accounts or {}).get(name)
            if want is not None and pod.account != want:
                diags.append(error(pod.span, "bind",
                                   f"pod {pod.namespace}/{pod.name} runs as service account '{pod.account}', but workload "
                                   f"'{name}' runs as '{want}': under mtls its certificate would name the other "
                                   "account (give the workload that 'account', or the pod its serviceAccountName)",
                                   Note(mine[0][1], f"workload '{name}'")))
                continue
            out[name] += [(p, pod.span) for p in pod.prefixes]
    return out, diags


def overlapping(a: tuple, b: tuple) -> bool:
    """Whether two workloads (namespace, {key: value}[, keys their pods lack]) can select one pod: same
    namespace, no label key they both read with different values, and none that one requires and the
    other requires absent."""
    lacks_a, lacks_b = (a[2] if len(a) > 2 else ()), (b[2] if len(b) > 2 else ())
    return (a[0] == b[0] and all(b[1][k] == v for k, v in a[1].items() if k in b[1])
            and not any(k in b[1] for k in lacks_a) and not any(k in a[1] for k in lacks_b))


def members(binding: Binding, program) -> dict:
    """(family, address) -> (pod "namespace/name", pods of its workload), for the pods of a program's
    bound workloads (how witnesses name them: ir/owners.described)."""
    from anyplane.ir.owners import ownership

    own = ownership(program)
    selected = {i.name for i in program.identities if i.selector is not None}
    found: dict[str, list] = {}
    for pod in binding.pods:
        for p in pod.prefixes:
            if p.length == p.width:
                who = own.owner(p.family, p.value)
                if who in selected:
                    found.setdefault(who, []).append(((p.family, p.value), f"{pod.namespace}/{pod.name}"))
    return {at: (name, len({n for _, n in pods})) for pods in found.values() for at, name in pods}



def write(pods: list) -> str:
    """The pods of an import (`importers.cluster.Pod`) as a binding file `--bind` reads: each Pod with
    its labels, service account and addresses; each workload controller with its template's labels and
    account, and one `anyplane.io/v1` Addresses document giving their prefixes."""
    from anyplane.ir import yaml11

    docs: list[dict] = []
    addresses: dict[str, list[str]] = {}
    for p in sorted(pods, key=lambda p: (p.namespace, p.kind, p.name)):
        meta = {"name": p.name, "namespace": p.namespace, "labels": dict(p.labels)}
        if p.kind == "Pod":
            ips = [p.address, *p.others]
            docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                         "spec": {"serviceAccountName": p.account},
                         "status": {"podIP": p.address, "podIPs": [{"ip": ip} for ip in ips]}})
        else:
            template = {"metadata": {"labels": dict(p.labels)}, "spec": {"serviceAccountName": p.account}}
            spec = {"template": template} if p.kind != "CronJob" else {"jobTemplate": {"spec": {"template": template}}}
            version = {"Job": "batch/v1", "CronJob": "batch/v1", "ReplicationController": "v1"}.get(p.kind, "apps/v1")
            docs.append({"apiVersion": version, "kind": p.kind,
                         "metadata": {"name": p.name, "namespace": p.namespace}, "spec": spec})
            addresses[f"{p.kind}/{p.namespace}/{p.name}"] = [str(n) for n in p.networks]
    if addresses:
        docs.append({"apiVersion": "anyplane.io/v1", "kind": "Addresses", "addresses": addresses})
    return yaml11.dump_all(docs, sort_keys=False)
