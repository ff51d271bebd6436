"""Output directories that are replaced whole, and their manifest.

    write_output("out/", {"envoy/web/envoy.yaml": ...}, "all", digest)
      builds out/ beside it (.out.anyplane-new-PID), then swaps it in with one rename:
      out/ holds exactly the new files and anyplane-manifest.json, or, if anything
      fails or the process is stopped, exactly what it held before
    read_manifest("out/")  -> the manifest, after checking every file against it
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from pathlib import Path

from .pipeline import UsageError

MANIFEST = "anyplane-manifest.json"
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def manifest(artifacts: dict[str, str | bytes], target: str, policy_digest: str) -> str:
    """The manifest of an output directory: every file with its SHA-256, the policy's digest, the target
    and the anyplane version (no time stamps: the same input gives the same bytes)."""
    from importlib.metadata import version

    files = {}
    for name, data in sorted(artifacts.items()):
        raw = data if isinstance(data, bytes) else data.encode("utf-8")
        files[name] = hashlib.sha256(raw).hexdigest()
    return json.dumps({"anyplane": version("anyplane"), "target": target, "policy": policy_digest,
                       "files": files}, indent=1, sort_keys=True) + "\n"


def read_manifest(out_dir: str) -> dict:
    """The manifest of an output directory after checking every file against it; UsageError when the
    directory is not a complete, unmodified anyplane output."""
    root = Path(out_dir)
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"'{out_dir}' holds no anyplane output (no readable {MANIFEST})") from None
    for name, digest in files.items():
        try:
            actual = hashlib.sha256((root / name).read_bytes()).hexdigest()
        except OSError:
            raise UsageError(f"'{out_dir}' is incomplete: {name} is missing") from None
        if actual != digest:
            raise UsageError(f"'{out_dir}/{name}' was changed after anyplane wrote it")
    return data


def _clean_stale(parent: Path, name: str) -> None:
    """Remove building directories left by compiles that were killed (their process is gone)."""
    for stale in parent.glob(f".{name}.anyplane-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


#: Artifacts that hold a private key.
SECRETS = (".key", "/certs/cert.yaml", "/bootstrap.yaml")  # a bootstrap may hold a token


def write_output(out_dir: str, artifacts: dict[str, str | bytes], target: str, policy_digest: str) -> list[str]:
    """Replace an output directory with exactly these artifacts and their manifest, or leave it as it
    was: the new set is built in a sibling directory and swapped in whole. A directory that is not
    empty and holds no anyplane output is refused rather than replaced."""
    root = Path(out_dir)
    try:
        if root.exists() and not root.is_dir():
            raise UsageError(f"'{out_dir}' exists and is not a directory")
        if root.is_dir() and any(root.iterdir()) and not (root / MANIFEST).is_file():
            raise UsageError(f"'{out_dir}' is not empty and holds no anyplane output; give a new or empty directory")
        if root.is_symlink() and not root.exists():
            raise UsageError(f"'{out_dir}' is a symbolic link to '{os.readlink(root)}', which does not exist; give a "
                             "directory")
        # A link to a directory is written where it points (which exists); otherwise nothing is created but
        # the directory asked for and its missing parents.
        parent = root.resolve().parent if root.is_symlink() else root.absolute().parent
        parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(parent, root.name)
    except OSError as exc:
        raise UsageError(f"cannot write to '{out_dir}': {exc.strerror or exc}") from None
    building = parent / f".{root.name}.anyplane-new-{os.getpid()}"
    try:
        building.mkdir()
        for name, data in sorted(artifacts.items()):
            path = building / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data, encoding="utf-8")
            if name.endswith(SECRETS):
                os.chmod(path, 0o600)  # private keys: readable by their owner alone
        (building / MANIFEST).write_text(manifest(artifacts, target, policy_digest), encoding="utf-8")
        if root.is_dir() and _exchange(building, root.resolve()):
            shutil.rmtree(building)  # now the old output
        else:
            if root.is_dir():
                old = parent / f".{root.name}.anyplane-old-{os.getpid()}"
                os.rename(root, old)
                os.rename(building, root)
                shutil.rmtree(old)
            else:
                os.rename(building, root)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise UsageError(f"cannot write the output to '{out_dir}': {exc.strerror or exc}{where}; "
                         "the directory is as it was") from None
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return [str(root / name) for name in sorted(artifacts)] + [str(root / MANIFEST)]
