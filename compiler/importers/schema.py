"""The shape of each kind anyplane reads, checked strictly, as `kubectl apply` (strict field validation)
checks it: an unknown field, a value of the wrong type or a missing required field is an error at its
position, never a field quietly ignored:

    podSelector: {matchlabels: {role: api}}
      -> unknown field "matchlabels" in LabelSelector (did you mean "matchLabels"?)

The field names are the API's own (Kubernetes 1.37, policy.networking.k8s.io v1alpha1 and v1alpha2);
tests/importers/test_manifest_schema.py holds every struct here against Kubernetes' published schema. Parts of an
object that decide nothing about traffic (a container's probes, a pod's volumes) are `OPAQUE`: any value
is taken, as their own validation is Kubernetes' business.

`check(doc, path)` also normalises what JSON makes equal: an integral number written as `80.0` or `8e1`
is the integer 80, and a null item of a list of objects is an empty object (Go's decoder leaves the
zero value there). Required fields are required where their absence would change what a policy
means (a peer's CIDR, a rule's action, a port's number); a Pod without containers is taken as it is.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from anyplane.ir import yaml11
from anyplane.ir.source import Diagnostic, Span, error


class Type:
    """A node of a schema."""


@dataclass(frozen=True)
class Scalar(Type):
    """A string, an integer (of `bits`), a boolean, a number, or an int-or-string."""

    kind: str
    bits: int = 64


@dataclass(frozen=True)
class Struct(Type):
    """An object with known fields (every other field is an error)."""

    name: str
    fields: dict = field(hash=False)
    required: tuple = ()


@dataclass(frozen=True)
class ListOf(Type):
    """A list of items of one type."""

    item: Type


@dataclass(frozen=True)
class MapOf(Type):
    """An object with any keys, every value of one type."""

    value: Type


class _Opaque(Type):
    """Anything: a part of the object that decides nothing about traffic."""


OPAQUE = _Opaque()
STR, BOOL, NUM, INT_OR_STR = Scalar("string"), Scalar("boolean"), Scalar("number"), Scalar("int-or-string")
INT32, INT64 = Scalar("integer", 32), Scalar("integer", 64)
STRINGS, LABELS = ListOf(STR), MapOf(STR)


def _opaque(*names: str) -> dict:
    return dict.fromkeys(names, OPAQUE)


# ---- Kubernetes' own types -------------------------------------------------------------------------------

OBJECT_META = Struct("ObjectMeta", {
    "name": STR, "namespace": STR, "labels": LABELS, "annotations": LABELS, "generateName": STR, "uid": STR,
    "resourceVersion": STR, "generation": INT64, "selfLink": STR, "finalizers": STRINGS,
    **_opaque("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields",
              "ownerReferences")})
REQUIREMENT = Struct("LabelSelectorRequirement", {"key": STR, "operator": STR, "values": STRINGS},
                     ("key", "operator"))
SELECTOR = Struct("LabelSelector", {"matchLabels": LABELS, "matchExpressions": ListOf(REQUIREMENT)})
CONTAINER_PORT = Struct("ContainerPort", {"containerPort": INT32, "hostIP": STR, "hostPort": INT32, "name": STR,
                                          "protocol": STR}, ("containerPort",))
CONTAINER = Struct("Container", {
    "name": STR, "ports": ListOf(CONTAINER_PORT), "args": STRINGS, "command": STRINGS, "image": STR,
    "imagePullPolicy": STR, "restartPolicy": STR, "stdin": BOOL, "stdinOnce": BOOL, "terminationMessagePath": STR,
    "terminationMessagePolicy": STR, "tty": BOOL, "workingDir": STR,
    **_opaque("env", "envFrom", "lifecycle", "livenessProbe", "readinessProbe", "resizePolicy", "resources",
              "restartPolicyRules", "securityContext", "startupProbe", "volumeDevices", "volumeMounts")},
    ("name",))
POD_SPEC = Struct("PodSpec", {
    "containers": ListOf(CONTAINER), "initContainers": ListOf(CONTAINER), "serviceAccountName": STR,
    "serviceAccount": STR, "hostNetwork": BOOL, "nodeName": STR, "hostname": STR, "subdomain": STR,
    "nodeSelector": LABELS, "automountServiceAccountToken": BOOL, "dnsPolicy": STR, "enableServiceLinks": BOOL,
    "hostIPC": BOOL, "hostPID": BOOL, "hostUsers": BOOL, "hostnameOverride": STR, "preemptionPolicy": STR,
    "priority": INT32, "priorityClassName": STR, "restartPolicy": STR, "runtimeClassName": STR,
    "schedulerName": STR, "setHostnameAsFQDN": BOOL, "shareProcessNamespace": BOOL,
    "terminationGracePeriodSeconds": INT64, "activeDeadlineSeconds": INT64,
    **_opaque("affinity", "dnsConfig", "ephemeralContainers", "evictionResponders", "hostAliases",
              "imagePullSecrets", "os", "overhead", "readinessGates", "resourceClaims", "resources",
              "schedulingGates", "schedulingGroup", "securityContext", "tolerations", "topologySpreadConstraints",
              "volumes")})
POD_IP = Struct("PodIP", {"ip": STR}, ("ip",))
POD_STATUS = Struct("PodStatus", {
    "podIP": STR, "podIPs": ListOf(POD_IP), "hostIP": STR, "phase": STR, "message": STR, "reason": STR,
    "nominatedNodeName": STR, "qosClass": STR, "resize": STR, "observedGeneration": INT64,
    **_opaque("allocatedResources", "conditions", "containerStatuses", "ephemeralContainerStatuses",
              "extendedResourceClaimStatus", "hostIPs", "initContainerStatuses",
              "nodeAllocatableResourceClaimStatuses", "resourceClaimStatuses", "resources", "startTime",
              "volumeHealth")})
POD_TEMPLATE = Struct("PodTemplateSpec", {"metadata": OBJECT_META, "spec": POD_SPEC})
IP_BLOCK = Struct("IPBlock", {"cidr": STR, "except": STRINGS}, ("cidr",))
NP_PEER = Struct("NetworkPolicyPeer", {"podSelector": SELECTOR, "namespaceSelector": SELECTOR, "ipBlock": IP_BLOCK})
NP_PORT = Struct("NetworkPolicyPort", {"protocol": STR, "port": INT_OR_STR, "endPort": INT32})
NP_SPEC = Struct("NetworkPolicySpec", {
    "podSelector": SELECTOR, "policyTypes": STRINGS,
    "ingress": ListOf(Struct("NetworkPolicyIngressRule", {"from": ListOf(NP_PEER), "ports": ListOf(NP_PORT)})),
    "egress": ListOf(Struct("NetworkPolicyEgressRule", {"to": ListOf(NP_PEER), "ports": ListOf(NP_PORT)}))})
SERVICE_PORT = Struct("ServicePort", {"appProtocol": STR, "name": STR, "nodePort": INT32, "port": INT32,
                                      "protocol": STR, "targetPort": INT_OR_STR}, ("port",))
SERVICE_SPEC = Struct("ServiceSpec", {
    "ports": ListOf(SERVICE_PORT), "selector": LABELS, "type": STR, "clusterIP": STR, "clusterIPs": STRINGS,
    "externalIPs": STRINGS, "externalName": STR, "externalTrafficPolicy": STR, "internalTrafficPolicy": STR,
    "ipFamilies": STRINGS, "ipFamilyPolicy": STR, "loadBalancerClass": STR, "loadBalancerIP": STR,
    "loadBalancerSourceRanges": STRINGS, "publishNotReadyAddresses": BOOL, "sessionAffinity": STR,
    "trafficDistribution": STR, "allocateLoadBalancerNodePorts": BOOL, "healthCheckNodePort": INT32,
    **_opaque("sessionAffinityConfig")})


def _object(kind: str, spec: Type, required=(), status: Type | None = OPAQUE) -> Struct:
    fields = {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "spec": spec}
    return Struct(kind, fields | ({"status": status} if status is not None else {}), required)


def _workload(kind: str, fields: dict) -> Struct:
    return _object(kind, Struct(f"{kind}Spec", {"selector": SELECTOR, "template": POD_TEMPLATE, **fields}))


JOB_SPEC = Struct("JobSpec", {
    "selector": SELECTOR, "template": POD_TEMPLATE, "activeDeadlineSeconds": INT64, "backoffLimit": INT32,
    "backoffLimitPerIndex": INT32, "completionMode": STR, "completions": INT32, "managedBy": STR,
    "manualSelector": BOOL, "maxFailedIndexes": INT32, "parallelism": INT32, "podReplacementPolicy": STR,
    "suspend": BOOL, "ttlSecondsAfterFinished": INT32, **_opaque("podFailurePolicy", "scheduling", "successPolicy")})
NUMBERS = {"minReadySeconds": INT32, "replicas": INT32, "revisionHistoryLimit": INT32}

# ---- policy.networking.k8s.io ------------------------------------------------------------------------

NAMESPACED_POD = Struct("NamespacedPod", {"namespaceSelector": SELECTOR, "podSelector": SELECTOR},
                        ("namespaceSelector", "podSelector"))
ANP_SUBJECT = Struct("AdminNetworkPolicySubject", {"namespaces": SELECTOR, "pods": NAMESPACED_POD})
ANP_PORT = Struct("AdminNetworkPolicyPort", {
    "portNumber": Struct("Port", {"protocol": STR, "port": INT32}, ("protocol", "port")),
    "namedPort": STR,
    "portRange": Struct("PortRange", {"protocol": STR, "start": INT32, "end": INT32}, ("start", "end"))})
ANP_IN_PEER = Struct("AdminNetworkPolicyIngressPeer", {"namespaces": SELECTOR, "pods": NAMESPACED_POD})
ANP_OUT_PEER = Struct("AdminNetworkPolicyEgressPeer", {"namespaces": SELECTOR, "pods": NAMESPACED_POD,
                                                       "nodes": SELECTOR, "networks": STRINGS, "domainNames": STRINGS})
BANP_OUT_PEER = Struct("BaselineAdminNetworkPolicyEgressPeer", {"namespaces": SELECTOR, "pods": NAMESPACED_POD,
                                                                "nodes": SELECTOR, "networks": STRINGS})


def _admin_rules(prefix: str, out_peer: Struct) -> dict:
    return {"ingress": ListOf(Struct(f"{prefix}IngressRule", {"name": STR, "action": STR, "from": ListOf(ANP_IN_PEER),
                                                               "ports": ListOf(ANP_PORT)}, ("action", "from"))),
            "egress": ListOf(Struct(f"{prefix}EgressRule", {"name": STR, "action": STR, "to": ListOf(out_peer),
                                                             "ports": ListOf(ANP_PORT)}, ("action", "to")))}


CNP_PORT = Struct("Port", {"number": INT32, "range": Struct("PortRange", {"start": INT32, "end": INT32},
                                                             ("start", "end"))})
CNP_PROTOCOL = Struct("ClusterNetworkPolicyProtocol", {
    "tcp": Struct("ClusterNetworkPolicyProtocolTCP", {"destinationPort": CNP_PORT}),
    "udp": Struct("ClusterNetworkPolicyProtocolUDP", {"destinationPort": CNP_PORT}),
    "sctp": Struct("ClusterNetworkPolicyProtocolSCTP", {"destinationPort": CNP_PORT}),
    "destinationNamedPort": STR})
CNP_IN_PEER = Struct("ClusterNetworkPolicyIngressPeer", {"namespaces": SELECTOR, "pods": NAMESPACED_POD})
CNP_OUT_PEER = Struct("ClusterNetworkPolicyEgressPeer", {"namespaces": SELECTOR, "pods": NAMESPACED_POD,
                                                         "nodes": SELECTOR, "networks": STRINGS, "domainNames": STRINGS})
CNP_SPEC = Struct("ClusterNetworkPolicySpec", {
    "tier": STR, "priority": INT32,
    "subject": Struct("ClusterNetworkPolicySubject", {"namespaces": SELECTOR, "pods": NAMESPACED_POD}),
    "ingress": ListOf(Struct("ClusterNetworkPolicyIngressRule", {
        "name": STR, "action": STR, "from": ListOf(CNP_IN_PEER), "protocols": ListOf(CNP_PROTOCOL)},
        ("action", "from"))),
    "egress": ListOf(Struct("ClusterNetworkPolicyEgressRule", {
        "name": STR, "action": STR, "to": ListOf(CNP_OUT_PEER), "protocols": ListOf(CNP_PROTOCOL)},
        ("action", "to")))},
    ("tier", "priority", "subject"))

# Where the cluster's nodes and its API server are: Cilium's entities `host`, `remote-node` and
# `kube-apiserver` name them (compiler/importers/cilium.py).
NODE_ADDRESS = Struct("NodeAddress", {"type": STR, "address": STR}, ("type", "address"))
NODE = _object("Node", OPAQUE, status=Struct("NodeStatus", {"addresses": ListOf(NODE_ADDRESS), **_opaque(
    "allocatable", "capacity", "conditions", "config", "daemonEndpoints", "declaredFeatures", "features", "images",
    "nodeInfo", "phase", "runtimeHandlers", "volumesAttached", "volumesInUse")}))
ENDPOINT_ADDRESS = Struct("EndpointAddress", {"ip": STR, "hostname": STR, "nodeName": STR, "targetRef": OPAQUE},
                          ("ip",))
ENDPOINTS = Struct("Endpoints", {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "subsets": ListOf(Struct(
    "EndpointSubset", {"addresses": ListOf(ENDPOINT_ADDRESS), "notReadyAddresses": ListOf(ENDPOINT_ADDRESS),
                       "ports": OPAQUE}))})
ENDPOINT_SLICE = Struct("EndpointSlice", {
    "apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "addressType": STR, "ports": OPAQUE,
    "endpoints": ListOf(Struct("Endpoint", {"addresses": STRINGS, **_opaque(
        "conditions", "deprecatedTopology", "hints", "hostname", "nodeName", "targetRef", "zone")}, ("addresses",)))},
    ("addressType", "endpoints"))

# ---- anyplane.io: where workload controllers' pods are ----------------------------------------------

ADDRESSES = Struct("Addresses", {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META,
                                 "addresses": MapOf(OPAQUE)}, ("addresses",))

#: (API group, kind) -> (versions read, schema). Cilium's and Istio's specs are checked field by field
#: by their importers (compiler/importers/cilium.py, istio.py, routing.py), which refuse what they do
#: not know; here their metadata and top level.
KINDS: dict[tuple[str, str], tuple[tuple[str, ...], Struct]] = {
    ("", "Namespace"): (("v1",), _object("Namespace", Struct("NamespaceSpec", {"finalizers": STRINGS}))),
    ("", "Pod"): (("v1",), _object("Pod", POD_SPEC, status=POD_STATUS)),
    ("", "Service"): (("v1",), _object("Service", SERVICE_SPEC)),
    ("", "ReplicationController"): (("v1",), _object("ReplicationController", Struct(
        "ReplicationControllerSpec", {"selector": LABELS, "template": POD_TEMPLATE, "minReadySeconds": INT32,
                                      "replicas": INT32}))),
    ("networking.k8s.io", "NetworkPolicy"): (("v1",), _object("NetworkPolicy", NP_SPEC, status=None)),
    ("apps", "Deployment"): (("v1",), _workload("Deployment", {
        **NUMBERS, "paused": BOOL, "progressDeadlineSeconds": INT32, **_opaque("strategy")})),
    ("apps", "StatefulSet"): (("v1",), _workload("StatefulSet", {
        **NUMBERS, "podManagementPolicy": STR, "serviceName": STR,
        **_opaque("ordinals", "persistentVolumeClaimRetentionPolicy", "updateStrategy", "volumeClaimTemplates")})),
    ("apps", "DaemonSet"): (("v1",), _workload("DaemonSet", {
        "minReadySeconds": INT32, "revisionHistoryLimit": INT32, **_opaque("updateStrategy")})),
    ("apps", "ReplicaSet"): (("v1",), _workload("ReplicaSet", {k: NUMBERS[k] for k in ("minReadySeconds",
                                                                                      "replicas")})),
    ("batch", "Job"): (("v1",), _object("Job", JOB_SPEC)),
    ("batch", "CronJob"): (("v1",), _object("CronJob", Struct("CronJobSpec", {
        "jobTemplate": Struct("JobTemplateSpec", {"metadata": OBJECT_META, "spec": JOB_SPEC}), "schedule": STR,
        "concurrencyPolicy": STR, "failedJobsHistoryLimit": INT32, "startingDeadlineSeconds": INT64,
        "successfulJobsHistoryLimit": INT32, "suspend": BOOL, "timeZone": STR}))),
    ("policy.networking.k8s.io", "AdminNetworkPolicy"): (("v1alpha1",), _object("AdminNetworkPolicy", Struct(
        "AdminNetworkPolicySpec", {"priority": INT32, "subject": ANP_SUBJECT,
                                   **_admin_rules("AdminNetworkPolicy", ANP_OUT_PEER)}, ("priority", "subject")),
        ("metadata", "spec"))),
    ("policy.networking.k8s.io", "BaselineAdminNetworkPolicy"): (("v1alpha1",), _object(
        "BaselineAdminNetworkPolicy", Struct("BaselineAdminNetworkPolicySpec", {
            "subject": ANP_SUBJECT, **_admin_rules("BaselineAdminNetworkPolicy", BANP_OUT_PEER)}, ("subject",)),
        ("metadata", "spec"))),
    ("policy.networking.k8s.io", "ClusterNetworkPolicy"): (("v1alpha2",), _object("ClusterNetworkPolicy", CNP_SPEC,
                                                                                  ("metadata", "spec"))),
    ("anyplane.io", "Addresses"): (("v1",), ADDRESSES),
    ("", "Node"): (("v1",), NODE),
    ("", "Endpoints"): (("v1",), ENDPOINTS),
    ("discovery.k8s.io", "EndpointSlice"): (("v1",), ENDPOINT_SLICE),
    ("cilium.io", "CiliumNetworkPolicy"): (("v2",), Struct("CiliumNetworkPolicy", {
        "apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "spec": OPAQUE, "specs": OPAQUE, "status": OPAQUE})),
    ("cilium.io", "CiliumClusterwideNetworkPolicy"): (("v2",), Struct("CiliumClusterwideNetworkPolicy", {
        "apiVersion": STR, "kind": STR, "metadata": OBJECT_META, "spec": OPAQUE, "specs": OPAQUE, "status": OPAQUE})),
    ("security.istio.io", "AuthorizationPolicy"): (("v1", "v1beta1"), _object("AuthorizationPolicy", OPAQUE)),
    ("networking.istio.io", "VirtualService"): (("v1", "v1beta1", "v1alpha3"), _object("VirtualService", OPAQUE)),
    ("networking.istio.io", "DestinationRule"): (("v1", "v1beta1", "v1alpha3"), _object("DestinationRule", OPAQUE)),
}

#: API groups whose kinds decide traffic: a kind of theirs that anyplane does not read is an error rather
#: than a policy silently left out.
POLICY_GROUPS = ("networking.k8s.io", "policy.networking.k8s.io", "cilium.io", "security.istio.io",
                 "networking.istio.io", "crd.projectcalico.org", "projectcalico.org", "anyplane.io")
#: Kinds of those groups that decide nothing between workloads: read as absent.
NOT_POLICY = {("networking.k8s.io", k) for k in ("Ingress", "IngressClass", "IPAddress", "ServiceCIDR")} | \
    {("cilium.io", k) for k in ("CiliumEndpoint", "CiliumIdentity", "CiliumNode", "CiliumLoadBalancerIPPool",
                                "CiliumL2AnnouncementPolicy", "CiliumBGPPeeringPolicy", "CiliumEndpointSlice",
                                "CiliumExternalWorkload", "CiliumNodeConfig", "CiliumPodIPPool")}


def group_version(api_version) -> tuple[str, str]:
    """`apps/v1` -> ("apps", "v1"); `v1` -> ("", "v1")."""
    text = api_version if isinstance(api_version, str) else ""
    group, _, version = text.rpartition("/")
    return group, version


def _describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"the number {value:g}" if isinstance(value, float) else f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return "a list" if isinstance(value, list) else "an object"


_WANTED = {"string": "a string", "integer": "an integer", "boolean": "a boolean (true or false)",
           "number": "a number", "int-or-string": "an integer or a string"}


class _Checker:
    def __init__(self, path: str, label: str):
        self.path, self.label, self.errors = path, label, []

    def fail(self, span: Span, where: str, message: str) -> None:
        self.errors.append(error(span, "manifest", f"{self.label}: {where}: {message}" if where else
                                 f"{self.label}: {message}"))

    def scalar(self, t: Scalar, value, span: Span, where: str):
        """The value (normalised as JSON would), or None after an error."""
        kind = t.kind
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind in ("integer", "int-or-string") and number:
            if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
                self.fail(span, where, f"expected {_WANTED[kind]}, found {_describe(value)}")
                return None
            value = int(value)
            if not -(1 << (t.bits - 1)) <= value < (1 << (t.bits - 1)):
                self.fail(span, where, f"{value} does not fit a {t.bits}-bit integer")
                return None
            return value
        if (kind in ("string", "int-or-string") and isinstance(value, str)) or (kind == "boolean" and
                                                                                 isinstance(value, bool)) \
                or (kind == "number" and number):
            return value
        self.fail(span, where, f"expected {_WANTED[kind]}, found {_describe(value)}")
        return None

    def check(self, t: Type, value, span: Span, where: str):
        """Check `value` against `t`; returns the value to keep (normalised)."""
        if t is OPAQUE or value is None:
            return value
        if isinstance(t, Scalar):
            return self.scalar(t, value, span, where)
        if isinstance(t, ListOf):
            if not isinstance(value, yaml11.Sequence):
                self.fail(span, where, f"expected a list, found {_describe(value)}")
                return value
            for i, item in enumerate(value):
                item_span = value.item_spans[i]
                if item is None and isinstance(t.item, Struct):
                    item = value[i] = _empty(item_span)  # Go's decoder leaves the zero value for a null item
                value[i] = self.check(t.item, item, item_span, f"{where}[{i}]")
            return value
        if not isinstance(value, yaml11.Mapping):
            wanted = "an object" if isinstance(t, Struct) else "a map"
            self.fail(span, where, f"expected {wanted}, found {_describe(value)}")
            return value
        for key, item in list(value.items()):
            inner = f"{where}.{key}" if where else key
            if isinstance(t, MapOf):
                value[key] = self.check(t.value, item, value.value_spans[key], inner)
                continue
            if key not in t.fields:
                near = difflib.get_close_matches(key, list(t.fields), n=1, cutoff=0.6) or \
                    [f for f in t.fields if f.lower() == key.lower()]
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                self.fail(value.key_spans[key], "", f"unknown field {inner!r} in {t.name}{hint}")
                continue
            value[key] = self.check(t.fields[key], item, value.value_spans[key], inner)
        if isinstance(t, Struct):
            for key in t.required:
                if value.get(key) is None:
                    self.fail(span, where, f"{t.name} requires the field {key!r}")
        return value


def _empty(span: Span) -> yaml11.Mapping:
    out = yaml11.Mapping()
    out.span, out.key_spans, out.value_spans = span, {}, {}
    return out


def check(doc: yaml11.Mapping, path: str, schema: Struct, label: str) -> list[Diagnostic]:
    """Errors in one object against its kind's schema (none: the object now holds normalised values)."""
    checker = _Checker(path, label)
    checker.check(schema, doc, doc.span, "")
    return checker.errors
