"""The `edge-worker` command: run, check-config, healthcheck, submit, emulator."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import structlog

from worker import __version__
from worker.config import Config, broker_urls, describe_url, load_config, masked_dict
from worker.errors import ConfigError, ExitCode

log = structlog.get_logger("worker.cli")


class _Parser(argparse.ArgumentParser):
    """argparse that exits 64 (EX_USAGE) on bad usage, as the contract says."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge-worker", description="Run msgpack job requests from RabbitMQ on a Modzy Edge server.")
    parser.add_argument("--version", action="version", version=f"edge-worker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH", help="TOML file (default /etc/edge-worker/config.toml if it exists)")

    with_config(commands.add_parser("run", help="the daemon, in the foreground"))
    with_config(commands.add_parser("check-config", help="validate and print the effective configuration"))
    with_config(commands.add_parser("healthcheck", help="exit 0 when the broker and the edge answer, 1 otherwise"))
    submit = commands.add_parser("submit", help="publish one request; --wait prints the final reply as JSON")
    with_config(submit)
    submit.add_argument("--model", required=True, metavar="ID")
    submit.add_argument("--version", required=True, metavar="V", dest="model_version")
    submit.add_argument("--explain", action="store_true")
    submit.add_argument("--input", action="append", default=[], metavar="SOURCE:KEY=@FILE|SOURCE:KEY=TEXT")
    submit.add_argument("--wait", action="store_true")
    submit.add_argument(
        "--timeout", type=float, metavar="S", help="the request's job timeout, and how long --wait waits"
    )
    submit.add_argument("--request-id", metavar="ID")
    emulator = commands.add_parser("emulator", help="a local stand-in for the edge server (HTTP and gRPC)")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=55000)
    emulator.add_argument("--latency", type=float, default=0.05, metavar="S", help="seconds one job runs")
    emulator.add_argument("--capacity", type=int, default=8, metavar="N", help="jobs running at once (0: unlimited)")
    emulator.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    emulator.add_argument("--chunk-size", default="1M")
    emulator.add_argument("--fail-rate", type=float, default=0.0)
    emulator.add_argument("--grpc-port", type=int, metavar="P", help="serve the gRPC API too (0: a free port)")
    emulator.add_argument("--gateway", metavar="VERSION", help="grpc-gateway version the HTTP face imitates")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        return _emulator(args)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edge-worker: configuration error: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    from worker.logs import configure_logging  # noqa: PLC0415 -- configured by the entry point only

    if args.command == "check-config":
        print(json.dumps(masked_dict(config), indent=2))
        print(f"# configuration OK (source: {config.source})", file=sys.stderr)
        return int(ExitCode.OK)
    if args.command == "healthcheck":
        return _healthcheck(config)
    if args.command == "submit":
        # stdout carries the command's result (JSON); the client's log lines go to stderr.
        configure_logging(config.log.level, config.log.format, stream=sys.stderr)
        return _submit(config, args)
    configure_logging(config.log.level, config.log.format)
    from worker.service import Daemon  # noqa: PLC0415 -- keeps the light commands light

    try:
        return Daemon(config).run()
    except ConfigError as exc:
        log.error("worker_exit", reason="configuration", error=str(exc), exit_code=int(ExitCode.CONFIG))
        return int(ExitCode.CONFIG)
    except Exception:
        log.exception("worker_exit", reason="internal error", exit_code=int(ExitCode.SOFTWARE))
        return int(ExitCode.SOFTWARE)


def _healthcheck(config: Config) -> int:
    import pika  # noqa: PLC0415
    import pika.exceptions  # noqa: PLC0415

    from worker.broker import connection_parameters, root_cause  # noqa: PLC0415
    from worker.edge import make_edge_client  # noqa: PLC0415

    problems: list[str] = []
    broker_ok = False
    for display, url in zip(config.amqp.url, broker_urls(config.amqp), strict=True):
        try:
            params = connection_parameters(config.amqp, url)
            params.socket_timeout = 5
            connection = pika.BlockingConnection(params)
            connection.close()
            broker_ok = True
            break
        except (pika.exceptions.AMQPError, OSError) as exc:
            problems.append(f"broker {describe_url(display)} unreachable ({type(root_cause(exc)).__name__})")
    edge = make_edge_client(config.edge)  # GetFeatures for grpc://, GET /api/jobs/features for http(s)://
    edge_ok, why = edge.answers()
    edge.close()
    if not edge_ok:
        problems.append(f"edge {config.edge.url} unreachable ({why})")
    why_not = _not_consuming(config) if broker_ok and edge_ok else None
    if broker_ok and edge_ok and why_not is None:
        print(f"ok: broker and edge {config.edge.url} answer")
        return 0
    if why_not is not None:
        print(f"not consuming: {why_not}")
        return 1
    print("unhealthy: " + "; ".join(problems))
    return 1


def _not_consuming(config: Config) -> str | None:
    """With metrics.listen set, the running worker's own word (its /healthz): None while it consumes."""
    if not config.metrics.listen:
        return None
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from worker.config import parse_listen  # noqa: PLC0415

    host, port = parse_listen(config.metrics.listen)
    host = "127.0.0.1" if host in {"0.0.0.0", ""} else ("::1" if host == "::" else host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            doc = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"the worker's {url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"the worker's {url} does not answer ({type(exc).__name__})"
    if doc.get("consuming", True):
        return None
    return str(doc.get("not_consuming_reason") or "no reason given")


def parse_input(spec: str) -> tuple[str, str, bytes | str]:
    """SOURCE:KEY=@FILE (bytes from a file) or SOURCE:KEY=TEXT (a str)."""
    target, sep, value = spec.partition("=")
    source, colon, key = target.partition(":")
    if not sep or not colon or not source or not key:
        raise ValueError(f"--input {spec!r}: expected SOURCE:KEY=@FILE or SOURCE:KEY=TEXT")
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return source, key, path.read_bytes()
        except OSError as exc:
            raise ValueError(f"--input {spec!r}: cannot read {str(path)!r}: {exc.strerror}") from None
    return source, key, value


def _submit(config: Config, args: argparse.Namespace) -> int:
    """Publish one request through worker.client, connected as `run` connects (URL list, password, TLS)."""
    from worker.client import BrokerUnreachable, ClientError, EdgeWorkerClient, PublishError  # noqa: PLC0415

    if not args.input:
        print("edge-worker submit: at least one --input is required", file=sys.stderr)
        return int(ExitCode.USAGE)
    sources: dict[str, dict[str, bytes | str]] = {}
    try:
        for spec in args.input:
            source, key, value = parse_input(spec)
            sources.setdefault(source, {})[key] = value
    except ValueError as exc:
        print(f"edge-worker submit: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    text = all(isinstance(v, str) for inputs in sources.values() for v in inputs.values())
    try:
        client = EdgeWorkerClient.from_config(config.amqp)
    except BrokerUnreachable as exc:
        print(f"edge-worker submit: {exc}", file=sys.stderr)
        return int(ExitCode.UNAVAILABLE)
    with client:
        submit = client.jobs.submit_text if text else client.jobs.submit_embedded
        try:
            job = submit(
                args.model,
                args.model_version,
                sources,
                args.explain,
                timeout=args.timeout,
                request_id=args.request_id or None,
                reply_to=None if args.wait else config.amqp.reply_queue,
            )
        except PublishError as exc:
            print(f"edge-worker submit: {exc}", file=sys.stderr)
            return int(ExitCode.UNAVAILABLE)
        if not args.wait:
            print(json.dumps({"published": True, "correlation_id": job.correlation_id, "queue": config.amqp.queue}))
            return 0
        try:
            final = client.jobs.block_until_complete(job, timeout=(args.timeout or config.edge.job_timeout) + 30)
        except ClientError as exc:
            print(f"edge-worker submit: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(final.to_dict(), indent=2, default=_json_default))
    return 0 if final.status == "COMPLETE" else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _emulator(args: argparse.Namespace) -> int:
    from worker.emulator import main as emulator_main  # noqa: PLC0415

    argv = [
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--latency",
        str(args.latency),
        "--capacity",
        str(args.capacity),
        "--max-request-bytes",
        str(args.max_request_bytes),
        "--chunk-size",
        args.chunk_size,
        "--fail-rate",
        str(args.fail_rate),
    ]
    if args.grpc_port is not None:
        argv += ["--grpc-port", str(args.grpc_port)]
    if args.gateway is not None:
        argv += ["--gateway", args.gateway]
    return emulator_main(argv)
