"""Configuration checks: every key's range and shape, and the rules across keys, each error naming its key.

A leaf module: worker.config builds the typed values and calls `validate`; nothing here reads a file or
the environment (the secret files named by a key are only checked to exist).
"""

from __future__ import annotations

import importlib.util
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import ConfigError

if TYPE_CHECKING:
    from worker.config import Config

MASK = "****"


def validate(config: Config) -> None:
    """Raise ConfigError naming the first key whose value is out of range or inconsistent with another."""
    a, e, w = config.amqp, config.edge, config.worker
    for url in a.url:
        parsed = _split(url, "amqp.url", _mask_url_safe(url))
        if parsed.scheme not in {"amqp", "amqps"} or not parsed.hostname or not _port_ok(parsed):
            raise ConfigError(f"amqp.url: expected amqp://host[:port]/vhost or amqps://..., got {mask_url(url)!r}")
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
    _check_range("amqp.confirm_timeout", a.confirm_timeout, 0.1, 3600)
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
        return mask_url(url)
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


def mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by ****."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{netloc[2]}"))
