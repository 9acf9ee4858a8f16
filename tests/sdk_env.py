"""A virtual environment of its own for the edge SDK (`modzy-sdk` 0.11.6 pins protobuf ~=4.21 and pulls in
boto3, so it cannot share the project's). Made once under .venv-sdk/ (gitignored), reused while its stamp
file says the install completed."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

SDK_REQUIREMENT = "modzy-sdk==0.11.6"
ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-sdk"
_STAMP = VENV / f".installed-{SDK_REQUIREMENT}"
_INSTALL_TIMEOUT_S = 600


class SdkEnvUnavailable(Exception):
    """The SDK's environment could not be made; the message says what is missing."""


def sdk_python() -> Path:
    """The interpreter of the SDK's environment, creating the environment first when needed."""
    python = VENV / "bin" / "python"
    if _STAMP.exists() and python.exists():
        return python
    lock_path = ROOT / ".cache" / "sdk-env.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be making it right now
        if _STAMP.exists() and python.exists():
            return python
        shutil.rmtree(VENV, ignore_errors=True)  # absent, or left half-made by an interrupted run
        _run([sys.executable, "-m", "venv", str(VENV)], "python -m venv")
        _run([str(python), "-m", "pip", "install", "-q", SDK_REQUIREMENT], f"pip install {SDK_REQUIREMENT}")
        _run([str(python), "-c", "from modzy.edge.client import EdgeClient"], "importing modzy.edge.client")
        _STAMP.touch()
    return python


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SdkEnvUnavailable(f"{what} for {VENV} failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise SdkEnvUnavailable(f"{what} for {VENV} failed (exit {done.returncode}): {tail}")
