"""Where each identity's pods are, and how the Kubernetes exporters select them.

An identity's pods are the pods of one namespace whose labels a selector picks out. Three sources,
in order of precedence:

- the deployment file's `kubernetes.workloads` (labels the user chose: refused if they also select
  another identity's pods);
- an imported cluster's own selectors (`Imported.selectors`): the values of the label keys its
  policies read, and `DoesNotExist` for the keys read that other pods of the namespace carry. They
  select exactly the identity's pods, today's and any created later with the same labels. Where
  they would select another identity's pods too (pods told apart by something labels do not say:
  service account, named ports, address blocks), or where the resource can only say `matchLabels`
  (Istio's selectors) and that is not enough, the identity's pods also need the label
  `anyplane.io/identity: NAME`;
- otherwise `anyplane.io/identity: NAME` in the deployment's namespace (default `default`).

The peers of a rule are written as selectors too: a whole namespace as a namespaceSelector, every
pod as `namespaceSelector: {}` (when the cluster was imported, so that its namespaces hold no other
pods), and outside addresses as the fewest ipBlocks and exceptions. An ipBlock is read as addresses
outside the cluster, as the importer and network-config-analyzer read it: a block may span pods'
addresses (`0.0.0.0/0` rather than the ranges between the pods), as the policies users write do.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass, field

from anyplane.ir.addr import Prefix
from anyplane.ir.match import merge_ranges

LABEL = "anyplane.io/identity"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass
class Placement:
    """An identity's namespace and the labels its pods carry (as the exported selectors read them)."""

    namespace: str
    labels: dict
    unset: tuple = ()  # label keys its pods lack (selected with DoesNotExist)
    fixed: bool = False  # chosen in the deployment file
    from_cluster: bool = False  # the imported cluster's own labels

    def selector(self, expressions: bool = True) -> dict:
        """The LabelSelector of its pods (`expressions`: the resource takes matchExpressions)."""
        out: dict = {"matchLabels": dict(self.labels)} if self.labels else {}
        if expressions and self.unset:
            out["matchExpressions"] = [{"key": k, "operator": "DoesNotExist"} for k in self.unset]
        return out

    def selects(self, other: "Placement", expressions: bool = True) -> bool:
        """Whether its selector also picks out the pods of `other` (in the same namespace)."""
        return (self.namespace == other.namespace and self.labels.items() <= other.labels.items()
                and not (expressions and set(self.unset) & set(other.labels)))


def placements(names: list[str], kubernetes: dict | None, expressions: bool = True) -> tuple[dict, list[tuple]]:
    """({identity: Placement}, [(identity, error)]): see the module's docstring. `expressions`: the selectors may use
    matchExpressions (False for resources that take matchLabels alone)."""
    kubernetes = kubernetes or {}
    default_ns = kubernetes.get("namespace", "default")
    mapped = kubernetes.get("workloads", {})
    cluster = kubernetes.get("selectors", {})
    out: dict[str, Placement] = {}
    for name in names:
        w = mapped.get(name)
        if w is not None:
            labels = dict(w["labels"]) if w.get("declared") else dict(w.get("labels") or {LABEL: name})
            out[name] = Placement(w.get("namespace") or default_ns, labels, tuple(w.get("unset") or ()), fixed=True)
        elif name in cluster:
            c = cluster[name]
            out[name] = Placement(c["namespace"], dict(c["labels"]), tuple(c["unset"]) if expressions else (),
                                  from_cluster=True)
        else:
            out[name] = Placement(default_ns, {LABEL: name})
    errors = []
    for a, pa in out.items():
        if pa.fixed and pa.unset and not expressions:
            errors.append((a, f"workload {a} selects pods without the label{'s' if len(pa.unset) > 1 else ''} "
                              f"{', '.join(pa.unset)}, and this resource's selectors take matchLabels alone "
                              "(DoesNotExist cannot be said)"))
        if pa.fixed:
            other = next((b for b, pb in out.items() if b != a and pa.selects(pb)), None)
            if other is not None:
                errors.append((a, f"the labels that select {a}'s pods ({pa.labels}) select {other}'s too, in namespace "
                                  f"{pa.namespace}: give each workload labels its pods alone carry (deployment file, "
                                  "kubernetes.workloads)"))
    return out, errors


def declared(program, kubernetes: dict | None) -> dict:
    """The deployment's section with the policy's own workloads (`workload NAME { namespace, labels }`)
    among `workloads`; the deployment file's entry for a name still wins."""
    kubernetes = dict(kubernetes or {})
    mapped = dict(kubernetes.get("workloads") or {})
    for i in program.identities:
        if i.selector is not None and i.name not in mapped:
            mapped[i.name] = {"namespace": i.selector.namespace, "labels": dict(i.selector.labels), "declared": True,
                              "unset": list(i.selector.absent)}
    kubernetes["workloads"] = mapped
    return kubernetes


def settle(placed: dict, alike, expressions: bool = True) -> dict[str, str]:
    """Where the cluster's labels do not single an identity's pods out: identities with the same selector
    that the policy decides alike (`alike(a, b)`) share it, as one workload (returns {name: the name
    whose policy stands for it}); the others get the label LABEL (in `placed`)."""
    same: dict[tuple, list[str]] = {}
    for name, p in placed.items():
        if p.from_cluster:
            same.setdefault((p.namespace, tuple(sorted(p.labels.items())), p.unset), []).append(name)
    share: dict[str, str] = {}
    tag: set = set()
    for names in same.values():
        if len(names) > 1:
            if all(alike(names[0], n) for n in names[1:]):
                share.update({n: names[0] for n in names[1:]})
            else:
                tag.update(names)
    by_ns: dict[str, list[str]] = {}
    for name, p in placed.items():
        if name not in share:
            by_ns.setdefault(p.namespace, []).append(name)
    for members in by_ns.values():
        for a in members:
            pa = placed[a]
            if pa.from_cluster and a not in tag and any(
                    b != a and pa.selects(placed[b], expressions) for b in members):
                tag.add(a)
    for a in sorted(tag):  # narrowing a selector with a label of its own pods selects nothing more (one pass)
        for n in [a] + [n for n, rep in share.items() if rep == a]:
            share.pop(n, None)
            placed[n].labels[LABEL] = n
    return share


def namespace_peer(namespace: str | None) -> dict:
    """Every pod of a namespace (None: of every namespace)."""
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}} if namespace else {}}


def pod_peer(p: Placement, here: str | None = None) -> dict:
    """An identity's pods as a peer of a policy in namespace `here` (a podSelector alone in its own)."""
    if p.namespace == here:
        return {"podSelector": p.selector()}
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: p.namespace}}, "podSelector": p.selector()}


def k8s_name(text: str) -> str:
    """A Kubernetes object name from an identity's."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50] or "x"


@dataclass
class Cover:
    """Addresses to allow, written as ipBlocks: the `wanted` ranges, and the `free` ranges (the pods', sorted
    and disjoint) that a block may hold or not, since an ipBlock is read as addresses outside the
    cluster (compiler/importers/networkpolicy.py). Ranges are inclusive, per IP version. Each prefix is written whichever way takes fewer entries: as one block less what it must
    not hold (`10.0.0.0/8` except `10.10.0.0/16`), or as its two halves' blocks."""

    wanted: dict = field(default_factory=dict)
    free: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # shared by the covers of one export

    def blocks(self) -> list[dict]:
        out = []
        for family in sorted(self.wanted):
            wanted = tuple(merge_ranges(self.wanted[family]))
            key = (family, wanted)
            if key not in self.memo:
                self.memo[key] = _cover(family, list(wanted), self.free.get(family, []))
            out += [{"ipBlock": {k: list(v) if isinstance(v, list) else v for k, v in b.items()}}
                    for b in self.memo[key]]
        return out


#: A prefix is written as one block less what it must not hold only up to this many exceptions.
MAX_EXCEPT = 64


def _cover(family: int, wanted: list, free: list) -> list[dict]:
    bits = 32 if family == 4 else 128
    klass = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    w_starts, f_starts = [lo for lo, _ in wanted], [lo for lo, _ in free]

    def inside(ranges, starts, lo, hi) -> list[tuple[int, int]]:
        k = max(bisect.bisect_right(starts, lo) - 1, 0)
        out = []
        while k < len(ranges) and ranges[k][0] <= hi:
            a, b = max(ranges[k][0], lo), min(ranges[k][1], hi)
            if a <= b:
                out.append((a, b))
            k += 1
        return out

    def nets(ranges) -> list[str]:
        return [str(p) for a, b in ranges for p in Prefix.range_of(family, a, b)]

    def block(lo: int, length: int, excepted: list[str]) -> dict:
        out: dict = {"cidr": f"{klass(lo)}/{length}"}
        if excepted:
            out["except"] = excepted
        return out

    def cost(blocks: list[dict]) -> int:
        return sum(1 + len(b.get("except", ())) for b in blocks)

    def best(lo: int, length: int) -> list[dict]:
        hi = lo + (1 << (bits - length)) - 1
        w = inside(wanted, w_starts, lo, hi)
        if not w:
            return []
        f = inside(free, f_starts, lo, hi)
        both = sorted(w + f)
        holes, at = [], lo
        for a, b in both:
            if a > at:
                holes.append((at, a - 1))
            at = max(at, b + 1)
        if at <= hi:
            holes.append((at, hi))
        if not holes:  # wanted and the pods' addresses fill it
            return [block(lo, length, [])]
        options = []
        if len(holes) <= MAX_EXCEPT:  # what it must not hold (with the pods' addresses, where fewer)
            excepted = min(nets(holes), nets(merge_ranges(holes + f)), key=len)
            if len(excepted) <= MAX_EXCEPT:
                options.append([block(lo, length, excepted)])
        options.append(best(lo, length + 1) + best(lo + (1 << (bits - length - 1)), length + 1))
        return min(options, key=cost)
    return best(0, 0)


def ip_blocks(region) -> list[dict]:
    """A region's address ranges (`region.ranges`: IP version -> inclusive ranges) as ipBlocks."""
    return [{"ipBlock": {"cidr": str(p)}} for family, ranges in sorted(region.ranges.items()) for lo, hi in ranges
            for p in Prefix.range_of(family, lo, hi)]


def collapse(items: list[dict], free=()) -> list[dict]:
    """ipBlocks (without `except`) of adjacent ranges merged into the fewest CIDRs; other peers kept.
    `free`: networks a block may hold or not (no one's addresses): merged with the rest, and left out
    where nothing else joins them."""
    blocks = [ipaddress.ip_network(i["ipBlock"]["cidr"]) for i in items if "ipBlock" in i]
    rest = [i for i in items if "ipBlock" not in i]
    out = []
    for version in (4, 6):
        spare = list(ipaddress.collapse_addresses(f for f in free if f.version == version))
        merged = ipaddress.collapse_addresses([b for b in blocks if b.version == version] + spare)
        out += [{"ipBlock": {"cidr": str(n)}} for n in merged
                if not any(n.subnet_of(f) for f in spare)]
    return rest + out
