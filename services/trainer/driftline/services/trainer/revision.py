"""Which code trained a model: the configured revision, else git's, else "unknown"."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_revision(configured: str = "", repo_dir: Path | None = None) -> str:
    """``configured`` when set; else ``git rev-parse HEAD`` (``-dirty`` when the tree has changes)."""
    if configured:
        return configured
    where = repo_dir or Path(__file__).resolve().parent
    try:
        head = _git(where, "rev-parse", "HEAD")
        dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
