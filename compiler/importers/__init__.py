"""Importers: policies users already have (Kubernetes manifests), read as anyplane policies.

`split(paths)` separates manifests (`*.yaml`, `*.yml`, and directories holding them) from policy files;
`imported(sources)` converts the manifests into one policy text, named `IMPORTED`, whose positions
`relocate` maps back into the manifests, so that findings, explain, query and diff point at the YAML.
"""

from __future__ import annotations

import dataclasses
import os

from anyplane.ir.source import Span

from . import k8s

IMPORTED = "<kubernetes>"


def split(paths: list[str]) -> tuple[list[str], list[str]]:
    """(policy paths, manifest files): a directory gives its manifests, unless it holds policy files."""
    from ..pipeline import POLICY_SUFFIX, files_under

    policy, manifests = [], []
    for p in paths:
        if os.path.isdir(p) and not files_under(p, (POLICY_SUFFIX,)):
            found = files_under(p, k8s.MANIFEST_SUFFIXES)
            if found:
                manifests += found
                continue
        (manifests if k8s.is_manifest(p) else policy).append(p)
    return policy, manifests


def relocate(obj, origins: dict[int, Span]):
    """`obj` (IR dataclasses, tuples, spans) with every position in the imported text replaced by the
    manifest position it came from."""
    if isinstance(obj, Span):
        return origins.get(obj.line, obj) if obj.file == IMPORTED else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            moved = relocate(value, origins)
            if moved is not value:
                changes[f.name] = moved
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        items = [relocate(x, origins) for x in obj]
        return tuple(items) if any(a is not b for a, b in zip(items, obj)) else obj
    if isinstance(obj, list):
        return [relocate(x, origins) for x in obj]
    return obj


def read_back(importer: str, files: dict[str, str]):
    """What an exporter's files decide, as IR: read through the importer of their kind (`k8s`:
    `networkpolicies.yaml` and `adminnetworkpolicies.yaml`, `cilium`: `ciliumnetworkpolicies.yaml`, `istio`: NetworkPolicies,
    AuthorizationPolicies and Services, with the pods `identities.yaml` describes)."""
    import yaml

    from ..pipeline import compile_sources

    resources = {"k8s": ("networkpolicies.yaml", "adminnetworkpolicies.yaml"),
                 "cilium": ("ciliumnetworkpolicies.yaml",),
                 "istio": ("networkpolicies.yaml", "adminnetworkpolicies.yaml", "authorizationpolicies.yaml",
                           "services.yaml", "virtualservices.yaml", "destinationrules.yaml")}
    if importer not in resources:
        raise ValueError(f"no importer reads {importer!r} output back")
    # (our own file, plain YAML 1.1: libyaml's loader reads it as PyYAML's does, faster)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    identities = yaml.load(files["identities.yaml"], Loader=loader)["identities"] or {}
    imported = k8s.read_back([(name, files[name]) for name in resources[importer] if name in files], identities)
    return compile_sources([(IMPORTED, imported.text)]).program
