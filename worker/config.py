"""Configuration: a TOML file overridden by EDGE_WORKER_<SECTION>__<KEY>, typed, validated, secrets resolved.

The checks of every key live in worker/config_check.py; this module reads, types and masks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.config_check import GRPC_EXTRA_HINT, MASK, grpc_installed, mask_url, parse_listen, validate
from worker.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edge-worker/config.toml")
ENV_PREFIX = "EDGE_WORKER_"


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    url: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    queue: str = "edge.jobs"
    reply_queue: str = "edge.replies"
    dead_letter_queue: str = "edge.jobs.dead"
    queue_type: str = "quorum"
    delivery_limit: int = 5
    declare: bool = True
    heartbeat: int = 30
    max_message_bytes: int = 16777216  # the largest reply published (RabbitMQ 4's default max_message_size)
    reply_to_pattern: str = ""  # a regular expression every reply_to must match in full; empty: any queue
    # Not in the contract's list: the broker's consumer timeout (RabbitMQ's `consumer_timeout`, 30 min by
    # default). The worker refuses a job timeout that could hold a delivery unacknowledged longer.
    consumer_timeout: int = 1800
    confirm_timeout: float = 30.0
    password_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: bool = True
    # The password after password_file / $CREDENTIALS_DIRECTORY resolution; never printed.
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    url: str = "http://127.0.0.1:55000"
    job_timeout: float = 600.0
    request_timeout: float = 30.0
    max_attempts: int = 5
    upload: str = "auto"
    embed_limit: int = 3_000_000
    chunk_encoding: str = "auto"
    api_key: str = field(default="", repr=False)
    # Not in the contract's list: the largest gRPC message sent or received (grpc:// only). Chunks are cut
    # to fit it; the edge's own receive limit (4 MiB on a stock server) still applies to what it takes.
    grpc_max_message_bytes: int = 64 << 20
    # Not in the contract's list: how often a job the edge forgot (404) is submitted again before JOB_LOST.
    max_resubmits: int = 2


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = 8
    lookahead: int = 2
    state_dir: str = "/var/lib/edge-worker"
    journal_retention: int = 86400
    journal_max_bytes: int = 268_435_456
    drain_timeout: float = 60.0
    max_request_bytes: int = 67_108_864
    # Not in the contract's list: how long start-up waits for the broker and the edge before exit 69.
    startup_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = "defaults"


_SECTIONS: dict[str, type[Any]] = {
    "amqp": AmqpConfig,
    "edge": EdgeConfig,
    "worker": WorkerConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}
_SECRET_KEYS = {("amqp", "password"), ("edge", "api_key")}
# Keys set only by resolution, never by a file or the environment.
_DERIVED_KEYS = {("amqp", "password")}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply environment overrides, validate, resolve secrets."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    source = "defaults"
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if path is not None or config_path.exists():
        try:
            with config_path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {str(config_path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {str(config_path)!r} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(config_path)!r} is not valid TOML: {exc}") from None
        for section, values in data.items():
            if section not in _SECTIONS:
                raise ConfigError(f"unknown section [{section}] (known: {', '.join(_SECTIONS)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: expected a table, got {type(values).__name__}")
            raw[section] = dict(values)
        source = str(config_path)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or section not in _SECTIONS:
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        raw.setdefault(section, {})[key] = _EnvString(value)
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        sections[section] = _build_section(section, cls, raw.get(section, {}))
    config = Config(**sections, source=source)
    validate(config)
    return _resolve_secrets(config, env)


class _EnvString(str):
    """A value that came from the environment: parsed to the key's type rather than type-checked."""

    __slots__ = ()


def _build_section(section: str, cls: type[Any], values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields or (section, key) in _DERIVED_KEYS:
            known = ", ".join(k for k in fields if (section, k) not in _DERIVED_KEYS)
            raise ConfigError(f"unknown key {section}.{key} (known: {known})")
        kwargs[key] = _coerce(f"{section}.{key}", fields[key].default, value)
    return cls(**kwargs)


def _coerce(name: str, default: Any, value: Any) -> Any:
    from_env = isinstance(value, _EnvString)
    if isinstance(default, bool):
        if from_env:
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{name}: expected a boolean (true/false), got {value!r}")
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected a boolean, got {type(value).__name__}")
    if isinstance(default, int):
        if from_env:
            try:
                return int(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__}")
    if isinstance(default, float):
        if from_env:
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}")
    if isinstance(default, tuple):
        if from_env:
            # A comma separates URLs only where the next one starts: a password may contain a comma.
            parts = re.split(r",(?=\s*amqps?://)", value)
            items = [url for url in (part.strip(" \t,") for part in parts) if url]
        elif isinstance(value, str):
            items = [value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            raise ConfigError(f"{name}: expected a string or a list of strings, got {type(value).__name__}")
        if not items:
            raise ConfigError(f"{name}: expected at least one value")
        return tuple(items)
    if isinstance(value, str):
        return str(value)
    raise ConfigError(f"{name}: expected a string, got {type(value).__name__}")


def _resolve_secrets(config: Config, env: Mapping[str, str]) -> Config:
    password = ""
    if config.amqp.password_file:
        password = _read_secret(config.amqp.password_file, "amqp.password_file")
    elif env.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(env["CREDENTIALS_DIRECTORY"]) / "amqp_password"
        if candidate.is_file():
            password = _read_secret(str(candidate), "$CREDENTIALS_DIRECTORY/amqp_password")
    return dataclasses.replace(config, amqp=dataclasses.replace(config.amqp, password=password))


def _read_secret(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: cannot read the secret file: {type(exc).__name__}") from None


def broker_urls(config: AmqpConfig) -> list[str]:
    """The broker URLs with the resolved password put in place; for connecting, never for printing."""
    if not config.password:
        return list(config.url)
    out = []
    for url in config.url:
        parts = urllib.parse.urlsplit(url)
        user = urllib.parse.unquote(parts.username or "guest")
        netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(config.password, safe='')}@"
        netloc += parts.hostname or ""
        if ":" in netloc.rpartition("@")[2]:  # an IPv6 literal
            netloc = netloc.replace(f"@{parts.hostname}", f"@[{parts.hostname}]")
        if parts.port:
            netloc += f":{parts.port}"
        out.append(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    return out


def describe_url(url: str) -> str:
    """A broker URL safe to log: password masked, query dropped."""
    parts = urllib.parse.urlsplit(mask_url(url))
    return urllib.parse.urlunsplit(parts._replace(query=""))


def masked_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, every secret masked, for check-config."""
    out: dict[str, Any] = {}
    for section in _SECTIONS:
        values = dataclasses.asdict(getattr(config, section))
        for key, value in list(values.items()):
            if (section, key) in _SECRET_KEYS:
                values[key] = MASK if value else ""
            elif isinstance(value, tuple):
                values[key] = [mask_url(v) if section == "amqp" else v for v in value]
        out[section] = values
    return out


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "GRPC_EXTRA_HINT",
    "MASK",
    "AmqpConfig",
    "Config",
    "EdgeConfig",
    "LogConfig",
    "MetricsConfig",
    "WorkerConfig",
    "broker_urls",
    "describe_url",
    "grpc_installed",
    "load_config",
    "masked_dict",
    "parse_listen",
]
