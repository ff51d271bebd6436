"""The engines by name: the one place the compiler finds them.

    get("p4")           the engine compiled by `-t p4`
    at("fabric")        the engine at a place on a path
    engines()           every engine, in path order (fabric, kernel, sidecar, then others)
    serving()           the engine a control plane feeds (`serve`)
    register(engine)    add one (an engine of your own, or a test's)

Exporters (`k8s`: resources a cluster enforces) are engines with no place: they
compile alone (`-t k8s`), never as a hop of `-t all`, and the driver reads
their output back through an importer (`reads_back_with`).

The built-in engines are imported when first asked for: each pulls its own
toolchain (protobuf for P4Runtime, libbpf's headers, Envoy's binary).
"""

from __future__ import annotations

from importlib import import_module

from .base import Engine

BUILTIN = (("p4", "anyplane.backends.p4.engine"), ("ebpf", "anyplane.backends.ebpf.engine"),
           ("envoy", "anyplane.backends.envoy.engine"), ("k8s", "anyplane.backends.k8s.engine"),
           ("cilium", "anyplane.backends.cilium.engine"), ("istio", "anyplane.backends.istio.engine"))
#: The built-in engines on a path that read HTTP requests, known without importing the others (a test
#: holds this to what each engine's capability says).
READS_HTTP = ("envoy",)
_engines: dict[str, Engine] = {}


def _load(only=None) -> None:
    for name, module in BUILTIN:
        if name not in _engines and (only is None or name in only):
            _engines[name] = import_module(module).ENGINE


def http_readers() -> list[Engine]:
    """The engines on a path that read HTTP (what `check` asks of them); the built-in ones that do not
    are not imported for it (each pulls its own toolchain)."""
    _load(READS_HTTP)
    return [e for e in _engines.values() if e.place and e.capability.sees_http]


def register(engine: Engine) -> Engine:
    """Make an engine available by its name and place (replacing one of the same name)."""
    clash = [e.name for e in engines() if engine.place and e.place == engine.place and e.name != engine.name]
    if clash:
        raise ValueError(f"place '{engine.place}' is taken by engine '{clash[0]}'")
    _engines[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    """Remove an engine that was registered (built-in ones come back when next asked for)."""
    _engines.pop(name, None)


def engines() -> list[Engine]:
    """Every engine, the built-in ones first in path order (whichever was imported first), then the
    others in the order they were registered."""
    _load()
    order = {name: k for k, (name, _) in enumerate(BUILTIN)}
    return sorted(_engines.values(), key=lambda e: order.get(e.name, len(order)))


def serving() -> Engine:
    """The engine whose targets a control plane feeds (`serve`): the one that offers it."""
    found = [e for e in engines() if e.offers("control_plane")]
    if not found:
        raise LookupError("no engine offers a control plane")
    return found[0]


def names() -> list[str]:
    """Every engine's target name."""
    return [e.name for e in engines()]


def places() -> list[str]:
    """Every place an engine sits, in path order (exporters, which write another system's resources
    rather than sit on a path, have none)."""
    return [e.place for e in engines() if e.place]


def get(name: str) -> Engine:
    """The engine of a target name; KeyError when there is none."""
    _load()
    return _engines[name]


def at(place: str) -> Engine:
    """The engine at a place on a path; KeyError when there is none."""
    for e in engines():
        if e.place == place:
            return e
    raise KeyError(place)
