"""The kinds of verification findings: a vocabulary the policy (`# anyplane: allow KIND`), the verifier
and every report share.

    dead, redundant, conflict, rate-conflict   rule anomalies (verify/checks.py)
    fragments-only                             a rule that decides only non-first fragments (packets
                                               without ports or ICMP type): rules above take the rest
    assertion-failed                           an assert that does not hold (verify/reach.py)
    route-unreachable, unused-version          traffic management (verify/routes.py)
    ownership                                  a name in a rule that does not cover addresses declared
                                               inside its prefixes (verify/ownership.py)
    shared-identity                            under mtls, workloads that hold one certificate (one
                                               namespace and service account): a rule naming one admits
                                               the others (verify/ownership.py)
    unknown                                    the solver could not decide: never a pass
"""

from __future__ import annotations

KINDS = ("dead", "redundant", "fragments-only", "conflict", "rate-conflict", "assertion-failed", "route-unreachable",
         "unused-version", "ownership", "shared-identity", "unknown")
DEFAULT_FAIL_ON = frozenset({"dead", "rate-conflict", "assertion-failed", "unknown"})
DEFAULT_SEVERITY = {"dead": "error", "redundant": "warning", "fragments-only": "warning", "conflict": "info", "rate-conflict": "error",
                    "assertion-failed": "error", "route-unreachable": "warning", "unused-version": "warning",
                    "ownership": "info", "shared-identity": "warning", "unknown": "error"}
