"""Node.js for the tests: find node and npm, install a folder's locked npm packages when missing or stale.

In CI (env CI set) a missing node or npm, or an install that fails, fails the test and says what is
missing; elsewhere the test is skipped with the reason. Installs use `npm ci` from the committed
package-lock.json, without running any package's install scripts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAMP = ".edge-worker-lock-sha256"  # inside node_modules: the package-lock.json it was installed from


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it: Node.js 18+ with npm, and the npm registry)")
    pytest.skip(reason)


def node_binary() -> str:
    """The node executable, or fail (CI) / skip (elsewhere)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed (Debian: apt-get install nodejs npm)")
    assert node is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    major = int(version.lstrip("v").split(".", 1)[0] or 0) if version.startswith("v") else 0
    if major < 18:
        _unavailable(f"node {version or '(unknown version)'} is too old: Node.js 18 or newer is needed")
    return node


def npm_install(folder: Path) -> Path:
    """`npm ci` in `folder` unless its node_modules matches its package-lock.json; returns node_modules."""
    node_binary()
    npm = shutil.which("npm")
    if npm is None:
        _unavailable("npm is not installed (Debian: apt-get install npm)")
    assert npm is not None
    lock = folder / "package-lock.json"
    want = hashlib.sha256(lock.read_bytes()).hexdigest()
    modules = folder / "node_modules"
    stamp = modules / STAMP
    # One installer at a time per folder (several pytest processes may share a checkout).
    with (folder / ".npm-install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == want:
            return modules
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-15:]
            _unavailable(f"npm ci in {folder.relative_to(ROOT)} failed ({result.returncode}): " + " | ".join(tail))
        stamp.write_text(want + "\n")
    return modules
