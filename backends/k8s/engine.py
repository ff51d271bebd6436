"""`-t k8s`: NetworkPolicies (and AdminNetworkPolicies) for a cluster's network plugin, written by
the export the Kubernetes exporters share (backends/kube/export.py) and read back through the importer."""

from __future__ import annotations

from ..kube.export import KubernetesExporter


class K8sEngine(KubernetesExporter):
    """`-t k8s`: NetworkPolicies for a cluster's network plugin, read back through the importer."""

    name = "k8s"
    #: The importer that reads this engine's output back (the driver runs it: compiler/importers).
    reads_back_with = "k8s"


ENGINE = K8sEngine()
