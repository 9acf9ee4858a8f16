"""Configuration: a TOML file overridden by EDGE_WORKER_<SECTION>__<KEY>, typed and validated in one place."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/edge-worker/config.toml")
ENV_PREFIX = "EDGE_WORKER_"
MASK = "****"


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
    _validate(config)
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


def _validate(config: Config) -> None:
    a, e, w = config.amqp, config.edge, config.worker
    for url in a.url:
        parsed = _split(url, "amqp.url", _mask_url_safe(url))
        if parsed.scheme not in {"amqp", "amqps"} or not parsed.hostname or not _port_ok(parsed):
            raise ConfigError(f"amqp.url: expected amqp://host[:port]/vhost or amqps://..., got {_mask_url(url)!r}")
    for key in ("queue", "reply_queue", "dead_letter_queue"):
        value = getattr(a, key)
        if not value or len(value.encode()) > 255:
            raise ConfigError(f"amqp.{key}: expected a queue name of 1 to 255 bytes, got {value!r}")
    if a.queue_type not in {"quorum", "classic"}:
        raise ConfigError(f"amqp.queue_type: expected 'quorum' or 'classic', got {a.queue_type!r}")
    _check_range("amqp.delivery_limit", a.delivery_limit, 1, 1000)
    _check_range("amqp.heartbeat", a.heartbeat, 0, 3600)
    # A reply of ours without results is well under 4 KiB; RabbitMQ refuses a max_message_size above 512 MiB.
    _check_range("amqp.max_message_bytes", a.max_message_bytes, 4096, 536870912)
    if a.reply_to_pattern:
        try:
            re.compile(a.reply_to_pattern)
        except re.error as exc:
            raise ConfigError(
                f"amqp.reply_to_pattern: not a regular expression ({exc}): {a.reply_to_pattern!r}"
            ) from None
    _check_range("amqp.consumer_timeout", a.consumer_timeout, 60, 7 * 86400)
    for key in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        value = getattr(a, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"amqp.{key}: {value!r} is not a readable file")
    if bool(a.tls_cert_file) != bool(a.tls_key_file):
        raise ConfigError("amqp.tls_cert_file and amqp.tls_key_file: set both for mutual TLS, or neither")
    parsed_edge = _split(e.url, "edge.url", e.url)
    if parsed_edge.username is not None or parsed_edge.password is not None:
        # Not echoed: it holds a secret. It would not be sent either (the edge takes an API key).
        raise ConfigError("edge.url: user and password in the URL are not supported; set edge.api_key instead")
    _check_edge_url(e.url, parsed_edge)
    _check_range("edge.job_timeout", e.job_timeout, 0.1, 7 * 86400)
    _check_range("edge.request_timeout", e.request_timeout, 0.1, 3600)
    _check_range("edge.max_attempts", e.max_attempts, 1, 100)
    _check_range("edge.embed_limit", e.embed_limit, 1, 1 << 40)
    _check_range("edge.max_resubmits", e.max_resubmits, 0, 100)
    if e.upload not in {"embedded", "chunked", "auto"}:
        raise ConfigError(f"edge.upload: expected 'embedded', 'chunked' or 'auto', got {e.upload!r}")
    if e.chunk_encoding not in _CHUNK_ENCODINGS:
        raise ConfigError(
            "edge.chunk_encoding: expected 'auto' (a base64 string, then a byte array if the gateway refuses it), "
            f"'json', 'bytes-array' or 'multipart', got {e.chunk_encoding!r}"
        )
    _check_range("edge.grpc_max_message_bytes", e.grpc_max_message_bytes, 1 << 20, (1 << 31) - 1)
    _check_range("worker.concurrency", w.concurrency, 1, 1024)
    _check_range("worker.lookahead", w.lookahead, 0, 64)
    if not w.state_dir:
        raise ConfigError("worker.state_dir: expected a directory path")
    # At least a minute: a finished reply must outlive its own publish retries (README, "Replies the broker
    # refuses"), or a redelivery would run the job again.
    _check_range("worker.journal_retention", w.journal_retention, 60, 365 * 86400)
    # The journal keeps final replies of up to amqp.max_message_bytes each; eviction starts at 80 % of the cap
    # and a reply in flight also passes through the WAL, so a cap under a few replies could not hold one.
    _check_range("worker.journal_max_bytes", w.journal_max_bytes, 1 << 20, 1 << 40)
    if w.journal_max_bytes < 4 * a.max_message_bytes:
        raise ConfigError(
            f"worker.journal_max_bytes: {w.journal_max_bytes} is less than 4 x amqp.max_message_bytes "
            f"({a.max_message_bytes}): the journal could not hold a few of the largest replies; raise it or lower "
            "amqp.max_message_bytes"
        )
    _check_range("worker.drain_timeout", w.drain_timeout, 0, 86400)
    _check_range("worker.max_request_bytes", w.max_request_bytes, 1024, 1 << 34)
    _check_range("worker.startup_timeout", w.startup_timeout, 0, 3600)
    if config.log.level.lower() not in {"debug", "info", "warning", "error", "critical"}:
        raise ConfigError(f"log.level: expected debug, info, warning, error or critical, got {config.log.level!r}")
    if config.log.format not in {"json", "console", "auto"}:
        raise ConfigError(f"log.format: expected 'json', 'console' or 'auto', got {config.log.format!r}")
    if config.metrics.listen:
        parse_listen(config.metrics.listen)
    # A delivery stays unacknowledged for its job's whole life: it must fit in the broker's consumer timeout,
    # with room for the submission, the results and the reply.
    if e.job_timeout + 2 * e.request_timeout > a.consumer_timeout:
        raise ConfigError(
            f"edge.job_timeout: {e.job_timeout:g} s plus two edge.request_timeout ({e.request_timeout:g} s) "
            f"exceeds amqp.consumer_timeout ({a.consumer_timeout} s): the broker would close the channel "
            "before the job could end; raise the broker's consumer_timeout and amqp.consumer_timeout together"
        )


_CHUNK_ENCODINGS = ("auto", "json", "bytes-array", "multipart")
GRPC_EXTRA_HINT = "pip install 'edge-worker[grpc]'"


def grpc_installed() -> bool:
    """Whether the grpc extra (grpcio and protobuf) is importable, without importing it."""
    try:
        return importlib.util.find_spec("grpc") is not None and importlib.util.find_spec("google.protobuf") is not None
    except ModuleNotFoundError:  # no "google" package at all
        return False


def _check_edge_url(url: str, parsed: urllib.parse.SplitResult) -> None:
    """http(s)://host[:port][/base] for the HTTP gateway; grpc://host:port (nothing more) for gRPC."""
    if parsed.scheme == "grpc":
        if not parsed.hostname or not _port_ok(parsed) or parsed.port is None or parsed.path not in ("", "/"):
            raise ConfigError(f"edge.url: expected grpc://host:port (the port is required), got {url!r}")
        if parsed.query or parsed.fragment:
            raise ConfigError(f"edge.url: a grpc:// URL takes no query or fragment, got {url!r}")
        if not grpc_installed():
            raise ConfigError(f"edge.url: {url!r} speaks gRPC, which needs the grpc extra: {GRPC_EXTRA_HINT}")
        return
    if parsed.scheme not in {"http", "https"} or not parsed.hostname or not _port_ok(parsed):
        raise ConfigError(
            f"edge.url: expected http://host:port or https://host:port (the HTTP gateway), or grpc://host:port "
            f"(the gRPC API), got {url!r}"
        )


def _split(url: str, key: str, shown: str) -> urllib.parse.SplitResult:
    """urlsplit, with its ValueError (an unclosed IPv6 bracket...) turned into an error naming the key."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid URL ({exc}): {shown!r}") from None


def _mask_url_safe(url: str) -> str:
    try:
        return _mask_url(url)
    except ValueError:
        return "<unparseable URL, not shown: it may hold a password>"


def _port_ok(parsed: urllib.parse.SplitResult) -> bool:
    """Whether the URL's port, if any, is a number from 0 to 65535 (urllib only checks on access)."""
    try:
        parsed.port  # noqa: B018 -- the property raises ValueError for a bad port
    except ValueError:
        return False
    return True


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: expected a value from {_number(low)} to {_number(high)}, got {value!r}")


def _number(value: float) -> str:
    """1048576 as itself, not 1.04858e+06; 0.1 as 0.1."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:9464") into its parts, naming the key on error."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics.listen: expected host:port (e.g. 127.0.0.1:9464), got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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


def _mask_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc[2]}"))


def describe_url(url: str) -> str:
    """A broker URL safe to log: password masked, query dropped."""
    parts = urllib.parse.urlsplit(_mask_url(url))
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
                values[key] = [_mask_url(v) if section == "amqp" else v for v in value]
        out[section] = values
    return out
