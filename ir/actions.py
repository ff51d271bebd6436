"""Actions: what a table entry does with the flows it matches.

Access-control actions (`Allow`, `Deny`, `RateLimit`) live in the `acl` table;
`Route` lives in the `routes` table; `CircuitBreaker` is attached per
destination service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

#: The largest rate count and burst every engine holds (the sidecar's token counts are 32-bit).
RATE_MAX = 2**32 - 1
#: The sidecar refills a token bucket at most every 50 ms (Envoy's minimum fill interval), so a request
#: rate limit needs a burst of at least one refill: `min_burst`.
REFILL_S = Fraction(1, 20)

RETRY_CONDITIONS = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx", "refused-stream")
EJECT_CONDITIONS = ("5xx", "gateway-error")


@dataclass(frozen=True, slots=True)
class Allow:
    """Admit the flow."""

    verdict = "allow"


@dataclass(frozen=True, slots=True)
class Deny:
    """Drop the flow (403 for HTTP requests)."""

    verdict = "deny"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Admit the flow while the rule's token bucket has tokens.

    `count` tokens are added every `per_s` seconds, up to `burst`. The unit is
    what the rule matches: requests for HTTP rules, packets for L3/L4 rules.
    Every entry lowered from one rule shares one bucket, named `bucket`.
    """

    count: int
    per_s: int
    burst: int
    bucket: str

    verdict = "allow"

    def __post_init__(self) -> None:
        if self.count <= 0 or self.per_s <= 0 or self.burst <= 0:
            raise ValueError("rate, period and burst must be positive")
        if self.count > RATE_MAX or self.burst > RATE_MAX:
            raise ValueError(f"rate and burst must be at most {RATE_MAX}")

    @property
    def per_second(self) -> Fraction:
        """Sustained rate in tokens per second."""
        return Fraction(self.count, self.per_s)

    @property
    def refill(self) -> int:
        """Tokens the sidecar adds per refill: one refill interval's worth, refills at least 50 ms apart."""
        return max(1, math.ceil(self.per_second * REFILL_S))


AclAction = Union[Allow, Deny, RateLimit]


@dataclass(frozen=True, slots=True)
class Backend:
    """One weighted target of a route: a service version (identity) and its weight in percent."""

    version: str
    identity: str
    weight: int

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 100:
            raise ValueError(f"weight {self.weight} out of 0..100")


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry policy: attempts after the first, conditions, per-try timeout in ms."""

    attempts: int
    on: tuple[str, ...]
    per_try_ms: int | None

    def __post_init__(self) -> None:
        unknown = set(self.on) - set(RETRY_CONDITIONS)
        if unknown:
            raise ValueError(f"unknown retry conditions {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class Route:
    """Send an allowed request to a weighted split of versions, with timeout and retries."""

    service: str
    split: tuple[Backend, ...]
    timeout_ms: int | None
    retry: Retry | None

    def __post_init__(self) -> None:
        if self.split and sum(b.weight for b in self.split) != 100:
            raise ValueError("route weights must sum to 100")


@dataclass(frozen=True, slots=True)
class Outlier:
    """Outlier ejection: after `consecutive` errors of a kind, eject a host for a while."""

    consecutive: int
    on: str
    ejection_ms: int


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    """Per-destination connection-pool limits and outlier ejection (None = engine default)."""

    max_connections: int | None = None
    max_pending: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None
    outlier: Outlier | None = None


def strictness(action: AclAction) -> tuple:
    """Rank used to break priority ties: deny, then the slowest rate limit, then allow."""
    if isinstance(action, Deny):
        return (0, Fraction(0), 0)
    if isinstance(action, RateLimit):
        return (1, action.per_second, action.burst)
    return (2, Fraction(0), 0)
