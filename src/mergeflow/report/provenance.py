"""What a reviewer needs to trust a report: the commit and its state, input hashes, packages, device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import yaml

from mergeflow.errors import MergeflowError

PACKAGES = ("torch", "torchvision", "open_clip_torch", "dvc", "snakemake", "pandas", "matplotlib", "safetensors",
            "numpy", "jinja2", "mergeflow")
# written by the engines while they run (DVC's lock, the .gitignore entries it adds for outputs): their
# changes are the run itself, not an uncommitted edit
ENGINE_FILES = ("dvc.lock", ".gitignore")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def git_state() -> dict:
    """``{"commit", "dirty", "changed"}``: HEAD and the tracked files that differ from it (none if no git)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git work tree)", "dirty": False, "changed": []}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    changed = sorted(path for path in (line[3:].strip() for line in status.splitlines())
                     if Path(path).name not in ENGINE_FILES)
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed}


def dvc_lock_inputs(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """Every dependency path recorded in ``dvc.lock`` with its hash (empty when DVC did not run here).

    A lock file that cannot be read, or not as DVC writes it, is one line naming it."""
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
        out: dict[str, str] = {}
        for stage in data.get("stages", {}).values():
            for dep in stage.get("deps", []):
                out[str(dep["path"])] = str(dep.get("md5") or dep.get("hash") or "?")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as exc:
        raise MergeflowError(f"{lock}: not a DVC lock file ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); "
                             "remove it and rerun `dvc repro`, or restore it from git") from None
    return dict(sorted(out.items()))


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def platform_line() -> str:
    return f"Python {platform.python_version()} on {platform.platform()}"
