"""explain: why one flow gets its verdict, as a JSON-ready dict.

The verdict comes from the reference interpreter; the kernel/switch verdict
is the interpreter on the L4 projection, so users see both layers at once.
"""

from __future__ import annotations

from anyplane.ir.addr import format_address
from anyplane.ir.conn import as_reply, reverse
from anyplane.ir.flow import Flow
from anyplane.ir.interp import evaluate, match_holds
from anyplane.ir.nodes import Program, decision_key
from anyplane.ir.owners import enclosing
from anyplane.ir.printer import format_action, format_breaker
from anyplane.ir.project import project_l4


def _rule_text(program: Program, rule_id: str | None) -> str | None:
    if rule_id is None:
        return None
    try:
        return program.rule(rule_id).text
    except KeyError:
        return None


def _end(program: Program, family: int, address: int, identity: str | None) -> dict:
    """An address, its owner, and the wider declarations it sits inside (which do not cover it)."""
    return {"address": format_address(family, address), "identity": identity,
            "inside": [{"identity": n, "prefix": str(p)} for n, p in enclosing(program, family, address)]}


def _engines_on_reply(flow: Flow, as_new: str, engines) -> list[dict]:
    """How each engine that holds a policy answers a packet that passes as a reply: by its connection
    state (`state` of its capability), or judged as a new flow where it keeps none."""
    out = []
    for name, place, state, protocols in engines:
        tcp = flow.proto == 6
        if protocols == "tcp" and not tcp:
            verdict, why = None, "does not see it (it sees TCP only)"
        elif state == "connections":
            verdict, why = "allow", "a reply of a connection it holds"
        elif state == "tcp-established" and tcp:
            verdict, why = "allow", f"as an established TCP segment (ACK or RST set); without them: {as_new}"
        else:
            verdict, why = as_new, "judged as a new flow (it keeps no connections)"
        out.append({"engine": name, "place": place, "verdict": verdict, "why": why})
    return out


def explain(program: Program, flow: Flow, engines=()) -> dict:
    """Verdict, deciding rule, route, limits, every matching rule and the L4-projection verdict.
    `engines`: (name, place, state, protocols) of the engines that hold policies, for a reply's answer
    engine by engine."""
    d = evaluate(program, flow)
    below = evaluate(project_l4(program), flow.without_http())
    matching = sorted((e for e in program.acl.entries if match_holds(e.match, flow, d.src_id, d.dst_id)),
                      key=decision_key)
    seen, matched = set(), []
    for e in matching:
        if e.rule in seen:
            continue
        seen.add(e.rule)
        matched.append({"rule": e.origin.loc, "priority": e.priority, "action": format_action(e.action),
                        "text": _rule_text(program, e.rule)})
    rate = d.rate
    route = None
    if d.route is not None:
        a = d.route.action
        route = {"rule": d.route.origin.loc, "service": a.service,
                 "split": [{"version": b.version, "weight": b.weight} for b in a.split],
                 "timeout_ms": a.timeout_ms,
                 "retry": None if a.retry is None else {"attempts": a.retry.attempts, "on": list(a.retry.on),
                                                        "per_try_ms": a.retry.per_try_ms},
                 "text": format_action(a)}
    reply = as_new = None
    decided = d
    if d.verdict == "deny" and flow.http is None:
        opened = as_reply(program, flow)
        if opened is not None:
            reply = {"connection": reverse(flow).text}
            as_new = {"verdict": d.verdict, "rule": d.rule, "default": d.entry is None,
                      "rule_text": _rule_text(program, d.entry.rule if d.entry else None)}
            decided = opened
    return {
        "flow": flow.text,
        "request": None if flow.http is None else {"path": flow.http.path, "host": flow.http.host,
                                                   "sent": flow.http.sent, "refused": flow.http.refused},
        "verdict": decided.verdict,
        "rule": decided.rule,
        "rule_text": _rule_text(program, decided.entry.rule if decided.entry else None),
        "default": decided.entry is None,
        "stateful": program.connections.stateful,
        "reply": reply,
        "as_new": as_new,
        "src": _end(program, flow.family, flow.src, d.src_id),
        "dst": _end(program, flow.family, flow.dst, d.dst_id),
        "peer": _peer(program, flow),
        "rate": None if rate is None else {"count": rate.count, "per_s": rate.per_s, "burst": rate.burst},
        "route": route,
        "limits": None if d.limits is None else format_breaker(d.limits),
        "matched": matched,
        "l4_verdict": "allow" if reply else below.verdict,
        "l4_rule": decided.rule if reply else below.rule,
        "engines": _engines_on_reply(flow, below.verdict, engines) if reply else [],
    }


def _peer(program: Program, flow) -> dict | None:
    """The client certificate a workload's sidecar verified (mTLS): its SPIFFE ID and the workloads that
    hold it; None when the policy has no mutual TLS."""
    if program.mtls is None or flow.proto != 6:
        return None
    return {"principal": flow.peer,
            "identities": [i.name for i in program.identities if flow.peer and i.principal == flow.peer]}


def format_explanation(x: dict) -> str:
    """The text form of `explain`."""
    def who(end: dict) -> str:
        inside = end.get("inside") or []
        if not inside:
            return f"{end['address']} ({end['identity'] or 'unowned'})"
        names = ", ".join(f"{i['identity']} {i['prefix']}" for i in inside)
        first = inside[0]["identity"]
        return (f"{end['address']} ({end['identity']}; inside {names}: a rule naming '{first}' does not cover "
                f"it, '{first}.*' does)")

    lines = [f"flow      {x['flow']}", f"source    {who(x['src'])}", f"dest      {who(x['dst'])}"]
    peer = x.get("peer")
    if peer is not None:
        held = ", ".join(peer["identities"]) or "no workload of the policy"
        lines.append(f"peer      {peer['principal']} ({held})" if peer["principal"] else
                     "peer      none: no client certificate (plaintext)")
    req = x["request"]
    if req and req["sent"] and not req["refused"]:
        lines.append(f"request   matched as {req['path']}"
                     + (f" host {req['host']}" if req["host"] else "") + "  [the sidecar's normal form]")
    lines.append(f"verdict   {x['verdict']}")
    if x.get("reply"):
        new = x["as_new"]
        by = "(the default allows it)" if x["default"] else f"{x['rule']}  {x['rule_text']}"
        lines.append(f"as reply  of the connection {x['reply']['connection']}")
        lines.append(f"rule      {by}  [allows the connection]")
        lines.append(f"as new    {new['verdict']}  "
                     + ("(no rule matches: the default decides)" if new["default"] else f"{new['rule']}  {new['rule_text']}"))
    elif req and req["refused"]:
        lines.append(f"refused   the sidecar answers 400: {req['refused']}")
    elif x["default"]:
        lines.append("rule      (no rule matches: the default decides)")
    else:
        lines.append(f"rule      {x['rule']}  {x['rule_text']}")
    if x["rate"]:
        r = x["rate"]
        lines.append(f"rate      {r['count']} per {r['per_s']}s, burst {r['burst']}")
    if x["route"]:
        lines.append(f"route     {x['route']['rule']}  {x['route']['text']}")
    if x["limits"]:
        lines.append(f"limits    {x['limits']}")
    l4_rule = f" ({x['l4_rule']})" if x["l4_rule"] else " (default)"
    if x.get("engines"):
        lines.append(f"below L7  the connection's opening: allow{l4_rule}")
        for e in x["engines"]:
            lines.append(f"  {e['place']:<9} {e['engine']}: {e['verdict'] or '-'}, {e['why']}")
    else:
        lines.append(f"below L7  {x['l4_verdict']}{l4_rule}  [what kernel and switch engines decide]")
    decided_by_default = x["as_new"]["default"] if x.get("reply") else x["default"]
    others = x["matched"][1:] if not decided_by_default else x["matched"]
    if others:
        lines.append("also matched, lower in precedence:")
        lines += [f"  {m['rule']}  [{m['priority']}] {m['text']}" for m in others]
    return "\n".join(lines) + "\n"
