"""Which code measured a row: the git commit when run from a checkout, and the installed version."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = "attention-sweep-orchestrator"


@functools.cache
def git_commit() -> str | None:
    """`git describe` of this project's checkout (`-dirty` with uncommitted changes); None when the
    code is not in one (an installed wheel)."""
    if not (ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def version() -> str | None:
    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        return None


def record() -> dict:
    return {"git_commit": git_commit(), "tool_version": version()}
