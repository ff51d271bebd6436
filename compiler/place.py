"""Placement: which engine on a flow's path enforces each part of the policy.

A flow is allowed iff every engine on its path allows it. Each engine gets a
program of its own, made of rules of the policy:

    denies it enforces     an L3/L4 deny goes to the first engine on the path that can hold it
                           (`--prefer early`: unwanted traffic is shed before it reaches hosts) or
                           the last (`--prefer late`: enforced next to the workload); HTTP denies go
                           to the sidecar, the only engine that sees requests
    rate limits            packet rates on the first (last) engine that meters; request rates on
                           the sidecar
    the default deny       on the first (last) engine that can hold it; that engine then admits
                           every allow of the policy
    allows as context      an engine admits every allow above a deny it holds that can meet it, so
                           that the deny takes only the flows the policy denies; an engine below L7
                           admits an HTTP allow as its L4 projection
    rechecks               when an engine below L7 holds a deny (or the default) beneath an HTTP
                           allow it can only admit as its L4 projection, the sidecar holds that
                           deny too and refines the allow

Every engine's program therefore allows at least what the policy allows (it
holds only allows, and denies in their full context), and every flow the
policy denies is denied by the engine its deny is placed on: together they
decide exactly what the policy decides. `verify/compose.py` proves it for
what the engines actually emitted.

Capacity: an engine that declares one (the switch's acl table) takes duties
in decision order while its entries fit; the rest spill to the next capable
engine on the path, the default first (it needs every allow), then the
lowest denies.

Engines are the registered ones (`anyplane.backends.registry`), and what this
module knows of them is their capability: whether an engine sees HTTP (HTTP
conditions, request rates, routes, rechecks), sees every flow of the path (a
default deny, L3/L4 denies), meters packets, which fields and families it
matches, how many entries a program needs there and what it cannot express.
No engine is named here.

Paths: one for every destination (`--path`), or per destination in the
deployment file:

    paths:
      default: fabric,kernel,sidecar
      mysql: fabric,kernel          # a service (or identity) by name: no sidecar in front of it
      10.0.9.0/28: fabric           # a CIDR
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from anyplane.backends import registry
from anyplane.backends.base import Engine, Options
from anyplane.ir import fields as F
from anyplane.ir.actions import Allow, Deny, RateLimit
from anyplane.ir.addr import Prefix
from anyplane.ir.conn import reverse_matches
from anyplane.ir.match import InSet, Match, PrefixMatch, int_ranges, options
from anyplane.ir.nodes import Program, Rule, Table, ordered
from anyplane.ir.project import l7_conditions
from anyplane.ir.source import Diagnostic, DiagnosticError, error
from anyplane.verify.index import Boxer, OverlapIndex, overlaps

PREFERENCES = ("early", "late", "everywhere")

ENFORCES, RECHECKS, ADMITS, ADMITS_L4, NOTHING = "enforces", "rechecks", "admits", "admits-l4", "-"


class PathError(ValueError):
    """A path or a `paths` section is malformed (usage error)."""


def parse_path(text) -> tuple[str, ...]:
    """`fabric,kernel,sidecar` (any order or subset of the engines' places, or a YAML list) as a tuple."""
    places = registry.places()
    parts = [str(p).strip() for p in text] if isinstance(text, list) else \
        [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [p for p in parts if p not in places]
    if bad or not parts or len(set(parts)) != len(parts):
        raise PathError(f"a path is a comma-separated subset of {', '.join(places)}, each once")
    return tuple(parts)


def _sidecar_only(program: Program, rule_id: str) -> str:
    """Why a deny the sidecar alone can hold goes there."""
    kinds = l7_conditions(program, rule_id)
    return "HTTP conditions: only the sidecar sees requests" if kinds == "HTTP" else \
        f"{kinds} conditions: only the sidecar sees them"


def unenforceable(program: Program) -> list[Diagnostic]:
    """An error for every rule with HTTP conditions that no registered engine that sees HTTP reads in
    full (the sidecar reads requests only on a service's http ports), with the engines' reasons."""
    readers = registry.http_readers()
    verdicts = [engine.reads_http(program) for engine in readers]
    out = []
    for rule in program.rules:
        if rule.layer != "L7" or not verdicts:
            continue
        whys = [v.get(rule.id) for v in verdicts]
        if all(w is not None for w in whys):
            out.append(error(rule.origin, "http-unenforceable", "no engine can enforce this rule's HTTP "
                             f"conditions: {'; '.join(dict.fromkeys(whys))}"))
    return out


def _path_order(paths: list[tuple[str, ...]]) -> list[str]:
    """The places of all paths in an order every path agrees with (flows cross them in that order); ties
    go to the registry's order (fabric, kernel, sidecar, then engines added later)."""
    rank = {p: k for k, p in enumerate(registry.places())}
    after: dict[str, set[str]] = {}
    for path in paths:
        for k, p in enumerate(path):
            after.setdefault(p, set()).update(path[:k])
    out: list[str] = []
    while len(out) < len(after):
        ready = [p for p in after if p not in out and after[p] <= set(out)]
        if not ready:  # paths disagree on the order: keep the registry's
            ready = [p for p in after if p not in out]
        out.append(min(ready, key=lambda p: rank.get(p, len(rank))))
    return out


def _fits(engine: Engine, rule: Rule, entries) -> bool:
    """Whether the engine matches every field and address family the rule's entries use (below L7 an
    HTTP part is left to an engine that sees HTTP)."""
    cap = engine.capability
    fields = set(cap.fields)
    for e in entries:
        for name, fm in e.match.fields:
            if F.layer(name) == "L7" and not cap.sees_http:
                continue
            if name not in fields and not (name.startswith(F.HEADER_PREFIX) and "http.header.*" in fields):
                return False
            if name in (F.SRC_IP, F.DST_IP):
                if any(o.prefix.family not in cap.families for o in options(fm)):
                    return False
    return True


@dataclass(frozen=True)
class Region:
    """Destinations that share a path: `match` (None: every destination no earlier region takes)."""

    label: str
    match: Match | None
    path: tuple[str, ...]

    @property
    def where(self) -> str:
        """`the path (a -> b)` or `the path of LABEL (a -> b)`, for messages."""
        name = "the path" if self.match is None else f"the path of {self.label}"
        return f"{name} ({' -> '.join(self.path)})"


def regions(program: Program, path: tuple[str, ...], spec: dict | None = None, where: str = "paths") \
        -> list[Region]:
    """The regions of a `paths` section (in its order, first match wins), then the default."""
    spec = dict(spec or {})
    if "default" in spec:
        try:
            path = parse_path(spec.pop("default"))
        except PathError as exc:
            raise PathError(f"{where}.default: {exc}") from None
    out = []
    names = {i.name for i in program.identities}
    for key, value in spec.items():
        label = str(key)
        try:
            p = parse_path(value)
        except PathError as exc:
            raise PathError(f"{where}.{label}: {exc}") from None
        if label in names:
            idents = program.service_identities(label) if program.identity(label).version is None else (label,)
            m = Match.of({F.DST_ID: InSet(tuple(sorted(idents)))})
        else:
            try:
                net = ipaddress.ip_network(label, strict=True)
            except ValueError:
                raise PathError(f"{where}.{label}: neither a service, an identity of the policy nor a CIDR") \
                    from None
            m = Match.of({F.DST_IP: PrefixMatch(Prefix(net.version, int(net.network_address), net.prefixlen))})
        out.append(Region(label, m, p))
    out.append(Region("default", None, path))
    return out


@dataclass
class Duty:
    """Something an engine must deny: a deny rule, a rate limit, or the default deny."""

    key: str  # a rule id, or "default"
    kind: str  # deny, rate, http-deny, http-rate, default
    rule: Rule | None
    capable: tuple[str, ...]  # places that can hold it alone
    chosen: dict[str, list[str]] = field(default_factory=dict)  # region -> places holding it there
    why: dict[str, str] = field(default_factory=dict)  # region -> why


@dataclass(frozen=True)
class Placement:
    """One row of the report: a rule (or the default), what every engine does with it, and why."""

    location: str
    text: str
    placed: tuple[str, ...]
    roles: dict[str, str]
    why: str
    regions: dict[str, list[str]]

    def to_json(self) -> dict:
        """One row of placement.json."""
        return {"rule": self.location, "text": self.text, "placed": list(self.placed), "engines": self.roles,
                "why": self.why, "regions": self.regions}


@dataclass
class Plan:
    """The outcome: each engine's program, the report rows and the regions."""

    places: list[str]
    programs: dict[str, Program]
    rows: list[Placement]
    regions: list[Region]
    prefer: str
    spilled: list[str] = field(default_factory=list)


class Planner:
    """Places one program on the paths of its regions."""

    def __init__(self, program: Program, regions_: list[Region], prefer: str = "early",
                 capacity: dict[str, int] | None = None, options: Options = Options()):
        if prefer not in PREFERENCES:
            raise PathError(f"--prefer takes one of {', '.join(PREFERENCES)}")
        self.program, self.regions, self.prefer = program, regions_, prefer
        self.capacity = capacity or {}
        self.options = options
        self.places = _path_order([r.path for r in regions_])
        self.engine = {p: registry.at(p) for p in self.places}
        self.http_places = [p for p in self.places if self.engine[p].capability.sees_http]
        self.covers = {p: self.engine[p].covers(program) for p in self.places
                       if not self.engine[p].capability.sees_everything}
        self.ordered = list(ordered(program.acl))
        self.rules = {r.id: r for r in program.rules}
        self.boxer = Boxer(program)
        self.boxes = [self.boxer.box(e.match) for e in self.ordered]
        self.by_rule: dict[str, list[int]] = {}
        for k, e in enumerate(self.ordered):
            self.by_rule.setdefault(e.rule, []).append(k)
        self.region_boxes = [None if r.match is None else self.boxer.box(r.match) for r in regions_]
        # Indexes over the allows only, and over the HTTP allows only: context and rechecks ask them.
        self.allow_pos = [k for k, e in enumerate(self.ordered) if not isinstance(e.action, Deny)]
        self.allow_index = OverlapIndex([self.boxes[k] for k in self.allow_pos])
        self.http_pos = [k for k in self.allow_pos if self.ordered[k].match.layer == "L7"]
        self.http_index = OverlapIndex([self.boxes[k] for k in self.http_pos])
        self.errors: list[Diagnostic] = []
        self.spilled: list[str] = []
        # Under a stateful policy: the replies of allowed connections, which an engine that keeps no
        # connections drops when it holds a deny (or the default) that meets them.
        self.replies = [] if not program.connections.stateful else [
            m for k in self.allow_pos for m in reverse_matches([self.ordered[k].match.without_layer("L7")])]
        self.reply_boxes = [self.boxer.box(m) for m in self.replies]
        self.reply_tcp = [int_ranges(m.get(F.PROTO)) == [(6, 6)] for m in self.replies]
        self.reply_index = OverlapIndex(self.reply_boxes)

    # -- what each rule asks for ----------------------------------------------------------
    def _reaches(self, p: str, rule: Rule) -> bool:
        """Whether all of the rule's flows cross the engine at p."""
        return self.engine[p].capability.sees_everything or self.covers[p].get(rule.id, False)

    def _capable(self, rule: Rule, kind: str) -> tuple[str, ...]:
        """The places that can hold a duty alone, from their engines' capabilities."""
        entries = [self.ordered[k] for k in self.by_rule[rule.id]]
        out = []
        for p in self.places:
            cap = self.engine[p].capability
            if not (self._reaches(p, rule) and _fits(self.engine[p], rule, entries)):
                continue
            if kind == "http-deny" and not cap.sees_http:
                continue
            if kind == "http-rate" and "request-rate-limit" not in cap.actions:
                continue
            if kind == "rate" and not (cap.meters_packets and self.engine[p].holds(entries[0].action) is None):
                continue
            out.append(p)
        return tuple(out)

    def _duties(self) -> list[Duty]:
        out = []
        for rule in self.program.rules:
            if rule.id not in self.by_rule:
                continue
            actions = {type(self.ordered[k].action) for k in self.by_rule[rule.id]}
            http = rule.layer == "L7"
            kind = None
            if Deny in actions:
                kind = "http-deny" if http else "deny"
            elif RateLimit in actions:
                kind = "http-rate" if http else "rate"
            if kind is not None:
                out.append(Duty(rule.id, kind, rule, self._capable(rule, kind)))
        if self.program.default == "deny":
            out.append(Duty("default", "default", None,
                            tuple(p for p in self.places if self.engine[p].capability.sees_everything)))
        return out

    def _touches(self, duty: Duty, r: int) -> bool:
        """Whether some of the duty's flows go to destinations of region r (earlier regions take theirs)."""
        if duty.rule is None:
            return True
        rbox = self.region_boxes[r]
        for k in self.by_rule[duty.key]:
            if rbox is not None and not overlaps(self.boxes[k], rbox):
                continue
            if not any(self._inside(k, j) for j in range(r)):
                return True
        return False

    def _inside(self, k: int, r: int) -> bool:
        """Whether every destination entry k can match belongs to region r (a structural check)."""
        region = self.regions[r].match
        m = self.ordered[k].match
        ids, ips = m.get(F.DST_ID), m.get(F.DST_IP)
        want_ids, want_ip = region.get(F.DST_ID), region.get(F.DST_IP)
        if want_ids is not None:
            return isinstance(ids, InSet) and set(ids.values) <= set(want_ids.values)
        net = want_ip.prefix
        if isinstance(ips, PrefixMatch):
            return net.covers(ips.prefix)
        if isinstance(ids, InSet):
            declared = [p for v in ids.values for p in self.boxer.identity_prefixes.get(v, [None])]
            return all(p is not None and net.covers(p) for p in declared)
        return False

    def _meets_replies(self, duty: Duty) -> set[str]:
        """Which replies of connections the policy allows a deny (or the default) can meet: "tcp", "other"."""
        if duty.kind == "default":
            met = range(len(self.replies))
        elif duty.kind == "deny":
            met = {i for k in self.by_rule[duty.key] for i in self.reply_index.candidates(self.boxes[k])
                   if overlaps(self.reply_boxes[i], self.boxes[k]) and _same_owners(self.replies[i], self.ordered[k].match)}
        else:
            met = ()
        return {"tcp" if self.reply_tcp[i] else "other" for i in met}

    def _order(self, path: tuple[str, ...]) -> list[str]:
        return list(reversed(path)) if self.prefer == "late" else list(path)

    def _choose(self, duty: Duty, r: int, skip: set[str] = frozenset()) -> None:
        region = self.regions[r]
        candidates = [p for p in self._order(region.path) if p in duty.capable and p not in skip]
        if not candidates:
            duty.chosen[region.label] = []
            return
        stateless = [p for p in candidates if self.engine[p].capability.state != "connections"]
        replies = self._meets_replies(duty) if stateless else set()
        if replies:  # an engine that keeps connections first: one that keeps none would drop replies
            candidates = [p for p in candidates if p not in stateless] + stateless
        duty.chosen[region.label] = candidates if self.prefer == "everywhere" else candidates[:1]
        first = "last" if self.prefer == "late" else "first"
        duty.why[region.label] = {
            "deny": f"L3/L4 deny: the {first} engine on the path that can hold it",
            "rate": f"packet rate limit: the {first} engine on the path that meters",
            "http-deny": "HTTP conditions: only the sidecar sees requests" if duty.rule is None else
                         _sidecar_only(self.program, duty.rule.id),
            "http-rate": "request rate limit: only the sidecar counts requests",
            "default": f"the default deny: the {first} engine on the path that can hold it; it admits every allow",
        }[duty.kind]
        if self.prefer == "everywhere":
            duty.why[region.label] = "every engine on the path that can hold it (--prefer everywhere)"
        if replies:
            chosen = duty.chosen[region.label]
            duty.why[region.label] += self._reply_note(replies, [p for p in chosen if p in stateless], stateless,
                                                       self._order(region.path).index(chosen[0]), region.path)

    def _reply_note(self, replies: set[str], holding: list[str], stateless: list[str], first: int, path) -> str:
        """What a duty that meets replies does to them where it is placed."""
        if not holding:
            if not set(stateless) & set(self._order(path)[:first]):
                return ""
            return (f" and keeps connections (the {' and the '.join(stateless)} keeps none: it would drop "
                    "replies of allowed connections, or pass TCP ones by their flags alone)")
        notes = []
        for p in holding:
            established = self.engine[p].capability.state == "tcp-established"
            said = []
            if "tcp" in replies and established:
                said.append("TCP segments shaped like replies of allowed connections (ACK or RST set) pass it "
                            "whether or not a connection exists")
            if "other" in replies or ("tcp" in replies and not established):
                said.append(("UDP, ICMP and other " if established else "") + "replies of allowed connections it "
                            "meets are dropped there")
            notes.append(f"the {p} keeps no connections: " + "; ".join(said))
        return "; " + "; ".join(notes) + " (no engine on the path that keeps connections can hold it)"

    def _unplaceable(self, duty: Duty, region: Region) -> None:
        span = duty.rule.origin if duty.rule else self.program.default_origin
        on = region.where
        every = [p for p in registry.places() if registry.at(p).capability.sees_everything]
        http = [p for p in registry.places() if registry.at(p).capability.sees_http]
        partial = [p for p in region.path if not self.engine[p].capability.sees_everything]
        seen_by = f": the {' and '.join(partial)} sees only part of the traffic" if partial else ""
        if duty.kind == "default":
            msg = f"the default deny needs an engine every flow crosses ({' or '.join(every)}) on {on}{seen_by}"
        elif duty.kind in ("http-deny", "http-rate"):
            what = "HTTP conditions need" if duty.kind == "http-deny" else "a request rate limit needs"
            if any(p in region.path for p in http):
                msg = f"{what} a sidecar, and not all of this rule's traffic reaches one (TCP to a service port)"
            else:
                msg = f"{what} the {' or the '.join(http)} on {on}"
        elif duty.kind == "rate":
            meters = [p for p in registry.places() if registry.at(p).capability.meters_packets]
            action = self.ordered[self.by_rule[duty.key][0]].action
            whys = [f"the {p} cannot: {self.engine[p].holds(action)}" for p in region.path
                    if p in meters and self.engine[p].holds(action) is not None]
            msg = f"a packet rate limit needs an engine that meters ({' or '.join(meters)}) on {on}" + (
                f" ({'; '.join(whys)})" if whys else "")
        else:
            msg = f"no engine on {on} can enforce this deny{seen_by}"
        self.errors.append(error(span, "placement", msg))

    # -- programs -------------------------------------------------------------------------
    def _held(self, duties: list[Duty]) -> tuple[dict[str, set[str]], dict[str, bool]]:
        """Per place: the duty keys it enforces, and whether it holds the default."""
        enforce = {p: set() for p in self.places}
        default = {p: False for p in self.places}
        for d in duties:
            for places in d.chosen.values():
                for p in places:
                    if d.key == "default":
                        default[p] = True
                    else:
                        enforce[p].add(d.key)
        return enforce, default

    def _http_allows_above(self, positions: list[int], r: int | None) -> list[int]:
        """HTTP allows decided before these entries that can meet them (and the region)."""
        out = set()
        if not self.http_pos:
            return []
        for k in positions:
            for i in self.http_index.candidates(self.boxes[k]):
                if self.http_pos[i] >= k:
                    break
                out.add(self.http_pos[i])
        if r is not None and self.region_boxes[r] is not None:
            out = {j for j in out if overlaps(self.boxes[j], self.region_boxes[r])}
        return sorted(out)

    def _http_allows(self, r: int) -> list[int]:
        rbox = self.region_boxes[r]
        return [k for k in self.http_pos if rbox is None or overlaps(self.boxes[k], rbox)]

    def _rechecks(self, duties: list[Duty]) -> dict[str, set[str]]:
        """Duties held below L7 beneath HTTP allows: per place that sees HTTP, the ones it holds too."""
        out: dict[str, set[str]] = {p: set() for p in self.http_places}
        for d in duties:
            if d.kind not in ("deny", "default"):
                continue
            for r, region in enumerate(self.regions):
                held = d.chosen.get(region.label, [])
                if not any(p not in self.http_places for p in held) or any(p in self.http_places for p in held):
                    continue
                above = self._http_allows(r) if d.key == "default" else \
                    self._http_allows_above(self.by_rule[d.key], r)
                if not above:
                    continue
                checker = next((p for p in region.path if p in self.http_places), None)
                if checker is None:
                    rule = self.rules[self.ordered[above[0]].rule]
                    self.errors.append(error(rule.origin, "placement", "only the L4 projection of this HTTP allow "
                                             f"is enforced on {region.where}: add an engine that sees HTTP"))
                    continue
                out[checker].add(d.key)
        return out

    def _context(self, denies: set[str], default: bool) -> set[str]:
        """Allow rules an engine must admit: all of them under its own default deny, else those decided
        before one of its denies that can meet it."""
        if default:
            return {e.rule for e in self.ordered if not isinstance(e.action, Deny)}
        out = set()
        for key in denies:
            for k in self.by_rule.get(key, ()):
                for i in self.allow_index.candidates(self.boxes[k]):
                    if self.allow_pos[i] >= k:
                        break
                    out.add(self.ordered[self.allow_pos[i]].rule)
        return out

    def program_for(self, place: str, denies: set[str], default: bool, rates: set[str]) -> Program:
        """One engine's program: its denies and rate limits, the allows they need, its default."""
        keep = denies | rates | self._context(denies, default)
        entries = []
        for e in self.program.acl.entries:
            if e.rule not in keep:
                continue
            if isinstance(e.action, RateLimit) and e.rule not in rates:
                e = replace(e, action=Allow())  # context only: the limit is metered elsewhere
            entries.append(e)
        rules = tuple(r for r in self.program.rules if r.id in keep)
        return replace(self.program, default="deny" if default else "allow", acl=Table(self.program.acl.name,
                       tuple(entries)), rules=rules,
                       routes=self.program.routes if "routes" in self.engine[place].capability.actions
                       else Table(self.program.routes.name, ()))

    def _programs(self, duties: list[Duty]) -> tuple[dict[str, Program], set[str]]:
        enforce, default = self._held(duties)
        rechecks = self._rechecks(duties)
        for place, keys in rechecks.items():
            for key in keys:
                if key == "default":
                    default[place] = True
                else:
                    enforce[place].add(key)
        kinds = {d.key: d.kind for d in duties}
        programs = {}
        for p in self.places:
            denies = {k for k in enforce[p] if kinds[k] in ("deny", "http-deny")}
            rates = {k for k in enforce[p] if kinds[k] in ("rate", "http-rate")}
            programs[p] = self.program_for(p, denies, default[p], rates)
        return programs, rechecks

    # -- capacity -------------------------------------------------------------------------
    def _spill(self, duties: list[Duty], programs: dict[str, Program]) -> bool:
        """Move duties off engines whose program does not fit; True when something moved."""
        moved = False
        for place, cap in self.capacity.items():
            if place not in programs:
                continue
            total, unsupported = self._count(place, programs[place])
            here = [d for d in duties if any(place in ps for ps in d.chosen.values())]
            victims: list[Duty] = [d for d in here if d.rule is not None and d.rule.origin.loc in unsupported]
            if total > cap:
                default = next((d for d in here if d.key == "default"), None)
                if default is not None:
                    victims.append(default)
                else:
                    ranked = sorted((d for d in here if d.rule is not None and d not in victims),
                                    key=lambda d: min(self.by_rule[d.key]))
                    victims += ranked[self._fitting(place, ranked, cap):]
            for d in victims:
                loc = d.rule.origin.loc if d.rule else None
                why = f"spilled: {place} cannot express it ({unsupported[loc]})" if loc in unsupported \
                    else f"spilled: {place} holds {cap} entries, this policy needs {total} there"
                for r, region in enumerate(self.regions):
                    if place not in d.chosen.get(region.label, []):
                        continue
                    self._choose(d, r, skip={place})
                    d.why[region.label] = f"{why}; then {d.why.get(region.label, '')}"
                    if not d.chosen[region.label]:
                        what = "the default deny" if d.key == "default" else "this rule"
                        self.errors.append(error(
                            d.rule.origin if d.rule else self.program.default_origin, "placement",
                            f"{why.removeprefix('spilled: ')}; no other engine on {region.where} can take {what}"))
                    moved = True
                label = d.rule.origin.loc if d.rule else "default"
                self.spilled.append(f"{label}: {place} -> "
                                    + ",".join(sorted({p for ps in d.chosen.values() for p in ps})))
        return moved

    def _count(self, place: str, program: Program) -> tuple[int, dict[str, str]]:
        """Entries the engine needs for a program, and what it cannot express."""
        return self.engine[place].count(program, self.options)

    def _fitting(self, place: str, ranked: list[Duty], cap: int) -> int:
        """How many of the duties (in decision order) the engine holds within its capacity: the highest
        ones, whose context (the allows above them) is smallest. Found by bisection on entry counts."""
        def fits(m: int) -> bool:
            denies = {d.key for d in ranked[:m] if d.kind in ("deny", "http-deny")}
            rates = {d.key for d in ranked[:m] if d.kind in ("rate", "http-rate")}
            return self._count(place, self.program_for(place, denies, False, rates))[0] <= cap
        lo, hi = 0, len(ranked)  # ranked[:lo] fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    # -- everything -----------------------------------------------------------------------
    def plan(self) -> Plan:
        duties = self._duties()
        for d in duties:
            for r, region in enumerate(self.regions):
                if not self._touches(d, r):
                    continue
                self._choose(d, r)
                if not d.chosen[region.label]:
                    self._unplaceable(d, region)
        self._raise()
        programs, rechecks = self._programs(duties)
        self._raise()
        for _ in range(12):
            if not self._spill(duties, programs):
                break
            self._raise()
            programs, rechecks = self._programs(duties)
            self._raise()
        rows = self._rows(duties, programs, rechecks)
        return Plan(self.places, programs, rows, self.regions, self.prefer, self.spilled)

    def _raise(self) -> None:
        if self.errors:
            seen, unique = set(), []
            for d in self.errors:
                if (d.span, d.message) not in seen:
                    seen.add((d.span, d.message))
                    unique.append(d)
            unique.sort(key=lambda d: (d.span is None, d.span or ("", 0, 0, 0, 0)))
            raise DiagnosticError(unique)

    # -- report ---------------------------------------------------------------------------
    def _rows(self, duties: list[Duty], programs: dict[str, Program], rechecks: set[str]) \
            -> list[Placement]:
        by_key = {d.key: d for d in duties}
        held = {p: {r.id for r in prog.rules} for p, prog in programs.items()}
        rows = []
        for rule in self.program.rules:
            d = by_key.get(rule.id)
            roles = {}
            for p in self.places:
                if rule.id not in held[p]:
                    roles[p] = NOTHING
                elif d is not None and any(p in ps for ps in d.chosen.values()):
                    roles[p] = ENFORCES
                elif d is not None and rule.id in rechecks.get(p, ()):
                    roles[p] = RECHECKS
                else:
                    roles[p] = ADMITS_L4 if rule.layer == "L7" and p not in self.http_places else ADMITS
            if d is not None:
                placed = tuple(p for p in self.places if roles[p] in (ENFORCES, RECHECKS))
                why = _why(d, self.regions)
                if any(rule.id in keys for keys in rechecks.values()):
                    why += "; the sidecar rechecks it: HTTP allows above it are admitted as L4 projections before"
                regions_ = {k: v for k, v in d.chosen.items()}
            else:
                placed = tuple(p for p in self.places if roles[p] == ADMITS)
                if rule.layer == "L7":
                    placed = tuple(p for p in self.http_places if roles[p] == ADMITS)
                    why = f"{l7_conditions(self.program, rule.id)} allow: the sidecar checks its conditions" if placed else \
                        "nothing below it is denied by any engine: its flows pass"
                    below = [p for p in self.places if roles[p] == ADMITS_L4]
                    if below and placed:
                        why += f"; its L4 projection is admitted by {', '.join(below)}"
                elif placed:
                    why = "allow: admitted where a deny beneath it or the default is enforced"
                else:
                    why = "nothing below it is denied by any engine: its flows pass"
                regions_ = {}
            rows.append(Placement(rule.origin.loc, rule.text, placed, roles, why, regions_))
        if self.program.default == "deny":
            d = by_key["default"]
            roles = {p: ENFORCES if any(p in ps for ps in d.chosen.values()) else
                     (RECHECKS if "default" in rechecks.get(p, ()) else NOTHING) for p in self.places}
            why = _why(d, self.regions)
            if any("default" in keys for keys in rechecks.values()):
                why += "; the sidecar rechecks it: HTTP allows are admitted as L4 projections before"
            loc = self.program.default_origin.loc if self.program.default_origin else "default"
            rows.append(Placement(loc, "default deny", tuple(p for p in self.places if roles[p] != NOTHING), roles,
                                  why, dict(d.chosen)))
        return rows


def _same_owners(a: Match, b: Match) -> bool:
    """False when the matches name disjoint owners on one side (every address has one owner, so they
    share no flow); True otherwise."""
    for side in (F.SRC_ID, F.DST_ID):
        x, y = a.get(side), b.get(side)
        if isinstance(x, InSet) and isinstance(y, InSet) and not set(x.values) & set(y.values):
            return False
    return True


def _why(d: Duty, regions_: list[Region]) -> str:
    """Why a duty sits where it does; per destination when the paths place it differently."""
    chosen = {tuple(v) for v in d.chosen.values()}
    reasons = sorted(set(d.why.values()))
    if len(chosen) <= 1:
        return "; ".join(reasons)
    where = ", ".join(f"{r.label}: {','.join(d.chosen[r.label]) or '-'}" for r in regions_ if r.label in d.chosen)
    return "; ".join(reasons) + f" (per destination: {where})"


def text(plan: Plan) -> str:
    """The placement report as text."""
    rows = plan.rows
    width = max((len(r.location) for r in rows), default=10)
    paths = "; ".join(f"{r.label}: {' -> '.join(r.path)}" for r in plan.regions)
    lines = [f"# placement (prefer {plan.prefer}); paths: {paths}", "",
             f"{'rule':<{width}}  {'placed':<22} " + " ".join(f"{p:<10}" for p in plan.places) + "  why"]
    for r in rows:
        placed = ",".join(r.placed) or "-"
        lines.append(f"{r.location:<{width}}  {placed:<22} " + " ".join(f"{r.roles[p]:<10}" for p in plan.places)
                     + f"  {r.why}")
    counts = {p: len(prog.rules) for p, prog in plan.programs.items()}
    lines += ["", "rules held: " + ", ".join(f"{p} {n}" for p, n in counts.items())]
    if plan.spilled:
        lines += ["spilled: " + "; ".join(plan.spilled)]
    return "\n".join(lines) + "\n"


def plan(program: Program, regions_: list[Region], prefer: str = "early", capacity: dict[str, int] | None = None,
         options: Options = Options()) -> Plan:
    """Place a program on its regions' paths (engines that declare a capacity spill what does not fit)."""
    return Planner(program, regions_, prefer, capacity, options).plan()


def prove(program: Program, placed: Plan, options: Options = Options(), outputs: dict | None = None, progress=None):
    """The composition proof: what each engine emitted for its program, read back as IR, together
    against the policy, per region with the engines on its path (translation validation).

    `outputs` (place -> backend Output) are the artifacts just emitted: an engine whose output can be
    read back is read from it; the others are compiled again for the read-back."""
    from anyplane.ir.project import project_l4
    from anyplane.verify.compose import Scope, prove as prove_composition

    lifted = {}
    for where, sub in placed.programs.items():
        out = (outputs or {}).get(where)
        if out is not None and out.read_back is not None:
            lifted[where] = out.read_back()
        else:
            lifted[where] = registry.at(where).read_back(sub, options)
    earlier: list[Match] = []
    scopes = []
    for r in placed.regions:
        scopes.append(Scope(r.label, r.match, tuple(earlier), r.path))
        if r.match is not None:
            earlier.append(r.match)
    # What an engine below L7 compiles: its program's L4 projection, which its read-back is compared with
    # rule by rule. (An HTTP engine's read-back is per listener, not rule by rule: it goes to the solver
    # whole.)
    sources = {where: project_l4(sub) for where, sub in placed.programs.items()
               if not registry.at(where).capability.sees_http}
    return prove_composition(program, lifted, scopes, sources=sources, progress=progress)
