"""The systemd unit: systemd's own checks pass, the exposure score stays low, the contract is in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_PATH = Path(__file__).resolve().parent.parent / "systemd" / "edge-worker.service"
DOCS_PATH = UNIT_PATH.parent.parent / "docs" / "operations-systemd.md"
EXEC_START_BINARY = "/opt/edge-worker/venv/bin/edge-worker"
MAX_EXPOSURE = 1.5
DRAIN_TIMEOUT_S = 60  # worker.drain_timeout's default in the interface spec, section 5

_SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    _SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian package systemd); CI has it",
)

UnitFile = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> UnitFile:
    """Read a unit file into section -> key -> every value given, in order (keys may repeat)."""
    sections: UnitFile = {}
    current: dict[str, list[str]] | None = None
    logical_lines: list[str] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical_lines.append(pending + line)
        pending = ""
    for line in logical_lines:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, separator, value = line.partition("=")
        assert separator, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_TIMESPAN_UNITS_S = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_timespan_s(text: str) -> float:
    """Seconds in a systemd time span such as `90`, `90s` or `1min 30s`."""
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, f"not a time span: {text!r}"
    for number, unit in parts:
        assert unit in _TIMESPAN_UNITS_S, f"unexpected unit {unit!r} in {text!r}"
        total += float(number) * _TIMESPAN_UNITS_S[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> UnitFile:
    return parse_unit(UNIT_PATH.read_text(encoding="utf-8"))


def _only(unit: UnitFile, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= is missing"
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times: {values}"
    return values[0]


def _systemd_analyze(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert _SYSTEMD_ANALYZE is not None
    environment = {**os.environ, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run(
        [_SYSTEMD_ANALYZE, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@needs_systemd_analyze
def test_verify_reports_nothing_but_the_missing_binary() -> None:
    result = _systemd_analyze("verify", str(UNIT_PATH))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    missing_binary = re.compile(
        rf"^edge-worker\.service: Command {re.escape(EXEC_START_BINARY)} is not executable: "
        r"No such file or directory$"
    )
    unexpected = [line for line in lines if not missing_binary.match(line)]
    assert unexpected == [], "systemd-analyze verify reported:\n" + "\n".join(lines)
    if not Path(EXEC_START_BINARY).exists():
        assert len(lines) == 1
        assert result.returncode != 0


@needs_systemd_analyze
def test_verify_is_clean_once_the_binary_exists(tmp_path: Path) -> None:
    # The same unit with ExecStart pointing at an executable that exists: not a single complaint.
    text = UNIT_PATH.read_text(encoding="utf-8").replace(EXEC_START_BINARY, sys.executable)
    copy = tmp_path / "edge-worker.service"
    copy.write_text(text, encoding="utf-8")
    result = _systemd_analyze("verify", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_security_exposure_is_at_most_1_5() -> None:
    result = _systemd_analyze("security", "--offline=yes", str(UNIT_PATH))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for edge-worker\.service: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no overall exposure level in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{result.stdout}"

    # systemd's own threshold check agrees (its scale is ten times the printed one).
    threshold = _systemd_analyze("security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT_PATH))
    assert threshold.returncode == 0, threshold.stdout


def test_unit_speaks_notify_with_a_watchdog(unit: UnitFile) -> None:
    assert _only(unit, "Service", "Type") == "notify"
    assert _only(unit, "Service", "NotifyAccess") == "main"
    watchdog_s = parse_timespan_s(_only(unit, "Service", "WatchdogSec"))
    assert 0 < watchdog_s <= 300


def test_unit_runs_the_worker_with_the_system_config(unit: UnitFile) -> None:
    command = _only(unit, "Service", "ExecStart").split()
    assert command == [EXEC_START_BINARY, "run", "--config", "/etc/edge-worker/config.toml"]
    assert "PYTHONUNBUFFERED=1" in unit["Service"]["Environment"]


def test_unit_restarts_on_failure_but_not_on_usage_or_config_errors(unit: UnitFile) -> None:
    assert _only(unit, "Service", "Restart") == "on-failure"
    assert parse_timespan_s(_only(unit, "Service", "RestartSec")) > 0
    prevented = _only(unit, "Service", "RestartPreventExitStatus").split()
    assert {"64", "78"} <= set(prevented)
    # A crash loop must end in a visible failed state.
    assert int(_only(unit, "Unit", "StartLimitBurst")) > 0
    assert parse_timespan_s(_only(unit, "Unit", "StartLimitIntervalSec")) > 0


def test_unit_leaves_time_to_drain(unit: UnitFile) -> None:
    assert parse_timespan_s(_only(unit, "Service", "TimeoutStopSec")) > DRAIN_TIMEOUT_S
    assert _only(unit, "Service", "KillSignal") == "SIGTERM"
    # One SIGTERM, to the main process: a second one would skip the drain.
    assert _only(unit, "Service", "KillMode") == "mixed"


def test_unit_keeps_state_and_passes_the_password_as_a_credential(unit: UnitFile) -> None:
    assert _only(unit, "Service", "StateDirectory") == "edge-worker"
    assert "amqp_password:/etc/edge-worker/amqp_password" in unit["Service"]["LoadCredential"]


def test_unit_is_hardened(unit: UnitFile) -> None:
    service = unit["Service"]
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateUsers": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "SystemCallArchitectures": "native",
    }
    assert {key: _only(unit, "Service", key) for key in expected} == expected
    families = set(_only(unit, "Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert service["SystemCallFilter"][0] == "@system-service"


def test_timespan_parser_understands_systemd_spellings() -> None:
    assert parse_timespan_s("90") == 90
    assert parse_timespan_s("90s") == 90
    assert parse_timespan_s("1min 30s") == 90
    assert parse_timespan_s("1m30s") == 90
    assert parse_timespan_s("500ms") == 0.5


def _documented_environment_lines() -> list[str]:
    """Every `Environment=` line the systemd docs show for a drop-in."""
    return [
        line.strip()
        for line in DOCS_PATH.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("Environment=")
    ]


def test_docs_write_a_literal_percent_as_two() -> None:
    lines = _documented_environment_lines()
    assert any("%%2F" in line for line in lines), "the docs show no drop-in with the vhost %%2F"
    for line in lines:
        assert "%" not in line.replace("%%", ""), f"a single % in a documented drop-in line: {line}"


def _verify_with_drop_in_lines(tmp_path: Path, lines: list[str]) -> str:
    text = UNIT_PATH.read_text(encoding="utf-8").replace(EXEC_START_BINARY, sys.executable)
    copy = tmp_path / "edge-worker.service"
    copy.write_text(text + "\n[Service]\n" + "\n".join(lines) + "\n", encoding="utf-8")
    result = _systemd_analyze("verify", str(copy))
    return result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_keeps_the_documented_drop_in_lines(tmp_path: Path) -> None:
    lines = _documented_environment_lines()
    assert lines
    assert "Failed to resolve specifiers" not in _verify_with_drop_in_lines(tmp_path, lines)
    # The check can fail: the same lines with one % each are what systemd drops.
    single = [line.replace("%%", "%") for line in lines if "%%" in line]
    assert "Failed to resolve specifiers" in _verify_with_drop_in_lines(tmp_path, single)
