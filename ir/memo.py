"""Per-program memoisation: results computed once for the program being compiled.

Emitting a sidecar per service asks the same program-wide questions hundreds of
times (entries by destination, rule names, identities per service). Programs
are immutable, so a result stays valid for as long as its program object is
alive; the cache holds the program itself, so an id is never mistaken for a
new program's, and keeps only the latest few programs.
"""

from __future__ import annotations

from functools import wraps

KEEP = 4


def per_program(fn=None, *, keep: int = KEEP):
    """Cache `fn(program)` by program identity (the latest `keep` programs). Works for any immutable
    argument: a program, a table, an endpoint tuple."""
    if fn is None:
        return lambda f: per_program(f, keep=keep)
    cache: dict[int, tuple[object, object]] = {}

    @wraps(fn)
    def wrapper(program):
        hit = cache.get(id(program))
        if hit is not None and hit[0] is program:
            return hit[1]
        if len(cache) >= keep:
            cache.pop(next(iter(cache)))
        value = fn(program)
        cache[id(program)] = (program, value)
        return value
    return wrapper
