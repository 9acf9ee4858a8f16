"""Configuration (§5): defaults, the TOML file, environment overrides, validation naming the key, secrets."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker.config as config_module
from worker.config import (
    AmqpConfig,
    Config,
    broker_urls,
    describe_url,
    load_config,
    masked_dict,
)
from worker.errors import ConfigError, ExitCode

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture(autouse=True)
def _no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never read the machine's /etc/edge-worker/config.toml."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "config.toml")
    yield


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    assert int(info.value.exit_code) == int(ExitCode.CONFIG) == 78
    return str(info.value)


# -- defaults and sources -----------------------------------------------------------------------------


def test_defaults_are_the_contracts() -> None:
    config = load_config(None, {})
    assert config.source == "defaults"
    assert config.amqp.url == ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    assert (config.amqp.queue, config.amqp.reply_queue, config.amqp.dead_letter_queue) == (
        "edge.jobs",
        "edge.replies",
        "edge.jobs.dead",
    )
    assert (config.amqp.queue_type, config.amqp.delivery_limit, config.amqp.declare) == ("quorum", 5, True)
    assert config.amqp.heartbeat == 30
    assert config.amqp.tls_verify is True
    assert config.amqp.password == ""
    assert config.edge.url == "http://127.0.0.1:55000"
    assert (config.edge.job_timeout, config.edge.request_timeout, config.edge.max_attempts) == (600, 30, 5)
    assert (config.edge.upload, config.edge.embed_limit, config.edge.chunk_encoding) == ("auto", 3_000_000, "auto")
    assert config.edge.api_key == ""
    assert (config.worker.concurrency, config.worker.state_dir) == (8, "/var/lib/edge-worker")
    assert config.worker.lookahead == 2
    assert config.worker.journal_max_bytes == 268_435_456
    assert (config.worker.journal_retention, config.worker.drain_timeout) == (86400, 60)
    assert config.worker.max_request_bytes == 67_108_864
    assert (config.log.level, config.log.format) == ("info", "auto")
    assert config.metrics.listen == ""


def test_default_path_is_read_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[worker]\nconcurrency = 3\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    config = load_config(None, {})
    assert config.worker.concurrency == 3
    assert config.source == str(path)


def test_toml_file_sets_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[amqp]
url = ["amqp://u:p@rabbit-1:5672/%2F", "amqps://u:p@rabbit-2:5671/prod"]
queue = "jobs"
reply_queue = "replies"
dead_letter_queue = "dead"
queue_type = "classic"
delivery_limit = 9
declare = false
heartbeat = 10

[edge]
url = "https://edge.local:8443"
job_timeout = 120.5
request_timeout = 10
max_attempts = 2
upload = "chunked"
embed_limit = 1000
chunk_encoding = "multipart"
api_key = "k-123"

[worker]
concurrency = 16
state_dir = "/tmp/state"
journal_retention = 60
drain_timeout = 5
max_request_bytes = 2048

[log]
level = "debug"
format = "json"

[metrics]
listen = "127.0.0.1:9464"
""",
    )
    config = load_config(path, {})
    assert config.source == str(path)
    assert config.amqp.url == ("amqp://u:p@rabbit-1:5672/%2F", "amqps://u:p@rabbit-2:5671/prod")
    assert (config.amqp.queue, config.amqp.reply_queue, config.amqp.dead_letter_queue) == ("jobs", "replies", "dead")
    assert (config.amqp.queue_type, config.amqp.delivery_limit, config.amqp.declare) == ("classic", 9, False)
    assert config.amqp.heartbeat == 10
    assert config.edge.url == "https://edge.local:8443"
    assert config.edge.job_timeout == 120.5
    assert isinstance(config.edge.request_timeout, float) and config.edge.request_timeout == 10.0
    assert (config.edge.max_attempts, config.edge.upload, config.edge.embed_limit) == (2, "chunked", 1000)
    assert (config.edge.chunk_encoding, config.edge.api_key) == ("multipart", "k-123")
    assert (config.worker.concurrency, config.worker.state_dir, config.worker.journal_retention) == (
        16,
        "/tmp/state",
        60,
    )
    assert (config.worker.drain_timeout, config.worker.max_request_bytes) == (5.0, 2048)
    assert (config.log.level, config.log.format, config.metrics.listen) == ("debug", "json", "127.0.0.1:9464")


def test_a_single_url_string_is_a_list_of_one(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[amqp]\nurl = "amqp://h/"\n'), {})
    assert config.amqp.url == ("amqp://h/",)


def test_the_example_file_is_valid_and_shows_the_defaults() -> None:
    assert load_config(EXAMPLE, {}).amqp == load_config(None, {}).amqp
    example, defaults = load_config(EXAMPLE, {}), load_config(None, {})
    for section in ("edge", "worker", "log", "metrics"):
        assert getattr(example, section) == getattr(defaults, section), section


# -- environment overrides --------------------------------------------------------------------------


def test_environment_overrides_the_file_with_types(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\nconcurrency = 3\n[amqp]\nqueue = "from-file"\n')
    config = load_config(
        path,
        {
            "EDGE_WORKER_WORKER__CONCURRENCY": " 12 ",
            "EDGE_WORKER_AMQP__DECLARE": "false",
            "EDGE_WORKER_AMQP__TLS_VERIFY": "0",
            "EDGE_WORKER_EDGE__JOB_TIMEOUT": "90.5",
            "EDGE_WORKER_EDGE__API_KEY": "from-env",
            "EDGE_WORKER_LOG__LEVEL": "warning",
            "OTHER_VARIABLE": "ignored",
        },
    )
    assert config.worker.concurrency == 12
    assert config.amqp.queue == "from-file"
    assert config.amqp.declare is False
    assert config.amqp.tls_verify is False
    assert config.edge.job_timeout == 90.5
    assert config.edge.api_key == "from-env"
    assert config.log.level == "warning"


@pytest.mark.parametrize(
    ("text", "value"), [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("Off", False)]
)
def test_environment_booleans(text: str, value: bool) -> None:
    assert load_config(None, {"EDGE_WORKER_AMQP__DECLARE": text}).amqp.declare is value


def test_environment_list_of_urls_is_comma_separated() -> None:
    config = load_config(None, {"EDGE_WORKER_AMQP__URL": "amqp://u:p@h1/%2F, amqps://u:p@h2:5671/v ,"})
    assert config.amqp.url == ("amqp://u:p@h1/%2F", "amqps://u:p@h2:5671/v")


def test_environment_variable_names_are_case_insensitive_after_the_prefix() -> None:
    assert load_config(None, {"EDGE_WORKER_worker__Concurrency": "2"}).worker.concurrency == 2


# -- errors name the key ------------------------------------------------------------------------------


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[amqp]\nqueeu = 'x'\n"))
    assert "unknown key amqp.queeu" in message
    assert "queue" in message  # the known keys are listed


def test_unknown_section_in_the_file_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[brokers]\nurl = 'x'\n"))
    assert "unknown section [brokers]" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    assert "amqp: expected a table" in config_error(write(tmp_path, "amqp = 5\n"))


def test_unknown_key_from_the_environment_is_named() -> None:
    assert "unknown key edge.timeout" in config_error(env={"EDGE_WORKER_EDGE__TIMEOUT": "5"})


@pytest.mark.parametrize("name", ["EDGE_WORKER_BROKER__URL", "EDGE_WORKER_AMQP_URL", "EDGE_WORKER_CONCURRENCY"])
def test_malformed_environment_variable_is_named(name: str) -> None:
    message = config_error(env={name: "x"})
    assert name in message
    assert "EDGE_WORKER_<SECTION>__<KEY>" in message


def test_password_cannot_be_set_directly() -> None:
    # Only password_file or the systemd credential provide it: a password in the environment would leak
    # into `ps e` and /proc.
    assert "unknown key amqp.password" in config_error(env={"EDGE_WORKER_AMQP__PASSWORD": "x"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[worker]\nconcurrency = '8'\n", "worker.concurrency: expected an integer, got str"),
        ("[worker]\nconcurrency = 8.5\n", "worker.concurrency: expected an integer, got float"),
        ("[worker]\nconcurrency = true\n", "worker.concurrency: expected an integer, got bool"),
        ("[edge]\njob_timeout = '600'\n", "edge.job_timeout: expected a number, got str"),
        ("[edge]\njob_timeout = false\n", "edge.job_timeout: expected a number, got bool"),
        ("[amqp]\ndeclare = 'yes'\n", "amqp.declare: expected a boolean, got str"),
        ("[amqp]\ndeclare = 1\n", "amqp.declare: expected a boolean, got int"),
        ("[amqp]\nqueue = 5\n", "amqp.queue: expected a string, got int"),
        ("[amqp]\nurl = 5\n", "amqp.url: expected a string or a list of strings, got int"),
        ("[amqp]\nurl = ['amqp://h/', 5]\n", "amqp.url: expected a string or a list of strings, got list"),
        ("[amqp]\nurl = []\n", "amqp.url: expected at least one value"),
    ],
)
def test_wrong_type_in_the_file_names_the_key(tmp_path: Path, toml: str, message: str) -> None:
    assert message in config_error(write(tmp_path, toml))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGE_WORKER_WORKER__CONCURRENCY": "eight"}, "worker.concurrency: expected an integer, got 'eight'"),
        ({"EDGE_WORKER_EDGE__JOB_TIMEOUT": "soon"}, "edge.job_timeout: expected a number, got 'soon'"),
        ({"EDGE_WORKER_AMQP__DECLARE": "maybe"}, "amqp.declare: expected a boolean (true/false), got 'maybe'"),
        ({"EDGE_WORKER_AMQP__URL": " , "}, "amqp.url: expected at least one value"),
    ],
)
def test_wrong_type_in_the_environment_names_the_key(env: dict[str, str], message: str) -> None:
    assert message in config_error(env=env)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("AMQP__URL", "http://rabbit/", "amqp.url: expected amqp://"),
        ("AMQP__URL", "amqp:///vhost", "amqp.url: expected amqp://"),
        ("AMQP__QUEUE", "q" * 256, "amqp.queue: expected a queue name of 1 to 255 bytes"),
        ("AMQP__REPLY_QUEUE", "", "amqp.reply_queue: expected a queue name"),
        ("AMQP__QUEUE_TYPE", "stream", "amqp.queue_type: expected 'quorum' or 'classic', got 'stream'"),
        ("AMQP__DELIVERY_LIMIT", "0", "amqp.delivery_limit: expected a value from 1 to 1000, got 0"),
        ("AMQP__HEARTBEAT", "-1", "amqp.heartbeat: expected a value from 0 to 3600"),
        ("AMQP__CONSUMER_TIMEOUT", "10", "amqp.consumer_timeout: expected a value from 60"),
        ("AMQP__PASSWORD_FILE", "/nonexistent/pw", "amqp.password_file: '/nonexistent/pw' is not a readable file"),
        ("AMQP__TLS_CA_FILE", "/nonexistent/ca.pem", "amqp.tls_ca_file:"),
        ("EDGE__URL", "127.0.0.1:55000", "edge.url: expected http://host:port"),
        ("EDGE__URL", "grpcs://edge:55000", "edge.url: expected http://host:port or https://host:port"),
        ("EDGE__URL", "grpc://edge", "edge.url: expected grpc://host:port (the port is required), got 'grpc://edge'"),
        ("EDGE__URL", "grpc://edge:99999", "edge.url: expected grpc://host:port"),
        ("EDGE__URL", "grpc://edge:55000/api", "edge.url: expected grpc://host:port"),
        ("EDGE__URL", "grpc://edge:55000?tls=1", "edge.url: a grpc:// URL takes no query or fragment"),
        ("EDGE__GRPC_MAX_MESSAGE_BYTES", "1000", "edge.grpc_max_message_bytes: expected a value from 1048576 to"),
        ("EDGE__JOB_TIMEOUT", "0", "edge.job_timeout: expected a value from 0.1"),
        ("EDGE__JOB_TIMEOUT", "nan", "edge.job_timeout: expected a value from 0.1"),
        ("EDGE__REQUEST_TIMEOUT", "inf", "edge.request_timeout: expected a value from 0.1"),
        ("EDGE__MAX_ATTEMPTS", "0", "edge.max_attempts: expected a value from 1 to 100"),
        ("EDGE__UPLOAD", "s3", "edge.upload: expected 'embedded', 'chunked' or 'auto', got 's3'"),
        ("EDGE__CHUNK_ENCODING", "raw", "'json', 'bytes-array' or 'multipart', got 'raw'"),
        ("EDGE__CHUNK_ENCODING", "base64", "edge.chunk_encoding: expected 'auto' (a base64 string, then a byte"),
        ("EDGE__EMBED_LIMIT", "0", "edge.embed_limit: expected a value from 1"),
        ("WORKER__CONCURRENCY", "0", "worker.concurrency: expected a value from 1 to 1024, got 0"),
        ("WORKER__CONCURRENCY", "100000", "worker.concurrency: expected a value from 1 to 1024"),
        ("WORKER__LOOKAHEAD", "-1", "worker.lookahead: expected a value from 0 to 64, got -1"),
        ("WORKER__LOOKAHEAD", "65", "worker.lookahead: expected a value from 0 to 64, got 65"),
        ("WORKER__STATE_DIR", "", "worker.state_dir: expected a directory path"),
        ("WORKER__JOURNAL_MAX_BYTES", "1000", "worker.journal_max_bytes: expected a value from 1048576"),
        ("WORKER__JOURNAL_MAX_BYTES", "33554432", "worker.journal_max_bytes: 33554432 is less than 4 x amqp.max_message"),
        ("WORKER__DRAIN_TIMEOUT", "-1", "worker.drain_timeout: expected a value from 0"),
        ("WORKER__MAX_REQUEST_BYTES", "100", "worker.max_request_bytes: expected a value from 1024"),
        ("LOG__LEVEL", "verbose", "log.level: expected debug, info, warning, error or critical, got 'verbose'"),
        ("LOG__FORMAT", "xml", "log.format: expected 'json', 'console' or 'auto', got 'xml'"),
        ("METRICS__LISTEN", "9464x", "metrics.listen: expected host:port"),
        ("METRICS__LISTEN", "127.0.0.1:99999", "metrics.listen: expected host:port"),
    ],
)
def test_bad_value_names_the_key(key: str, value: str, message: str) -> None:
    assert message in config_error(env={f"EDGE_WORKER_{key}": value})


def test_credentials_in_the_edge_url_are_refused_without_echoing_them() -> None:
    for url in ("http://user:s3cret-pw@127.0.0.1:55000", "https://s3cret-pw@edge.local:8443", "ftp://u:s3cret-pw@x"):
        message = config_error(env={"EDGE_WORKER_EDGE__URL": url})
        assert "edge.url: user and password in the URL are not supported; set edge.api_key" in message
        assert "s3cret-pw" not in message


def test_bad_url_is_shown_with_its_password_masked() -> None:
    message = config_error(env={"EDGE_WORKER_AMQP__URL": "http://user:hunter2@rabbit/"})
    assert "hunter2" not in message
    assert "user:****@rabbit" in message


def test_tls_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = write(tmp_path, "cert", "client.pem")
    assert "set both for mutual TLS" in config_error(env={"EDGE_WORKER_AMQP__TLS_CERT_FILE": str(cert)})


def test_job_timeout_must_fit_in_the_consumer_timeout() -> None:
    message = config_error(env={"EDGE_WORKER_EDGE__JOB_TIMEOUT": "1750"})
    assert "edge.job_timeout" in message
    assert "amqp.consumer_timeout (1800 s)" in message
    # Raising both together is the way out.
    config = load_config(None, {"EDGE_WORKER_EDGE__JOB_TIMEOUT": "1750", "EDGE_WORKER_AMQP__CONSUMER_TIMEOUT": "3600"})
    assert config.edge.job_timeout == 1750
    # The limit counts two request timeouts of room: 1740 + 2 * 30 fits 1800 exactly.
    assert load_config(None, {"EDGE_WORKER_EDGE__JOB_TIMEOUT": "1740"}).edge.job_timeout == 1740


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert f"config file {str(missing)!r} does not exist" in config_error(missing)


def test_invalid_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[amqp\nurl = \n")
    message = config_error(path)
    assert str(path) in message
    assert "not valid TOML" in message


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    assert "cannot be read" in config_error(tmp_path)  # a directory


# -- secrets ------------------------------------------------------------------------------------------


def test_password_file_replaces_the_url_password(tmp_path: Path) -> None:
    secret = write(tmp_path, "s3cr:t/@pw\n", "amqp_password")
    config = load_config(
        None, {"EDGE_WORKER_AMQP__PASSWORD_FILE": str(secret), "EDGE_WORKER_AMQP__URL": "amqp://app:old@rabbit/%2F"}
    )
    assert config.amqp.password == "s3cr:t/@pw"  # the trailing newline is not part of it
    import pika

    [url] = broker_urls(config.amqp)
    params = pika.URLParameters(url)
    assert (params.credentials.username, params.credentials.password) == ("app", "s3cr:t/@pw")
    assert (params.host, params.virtual_host) == ("rabbit", "/")


def test_systemd_credential_is_used_without_password_file(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "amqp_password").write_text("from-systemd\n", encoding="utf-8")
    config = load_config(None, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.amqp.password == "from-systemd"
    assert broker_urls(config.amqp) == ["amqp://guest:from-systemd@127.0.0.1:5672/%2F"]


def test_password_file_wins_over_the_systemd_credential(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "amqp_password").write_text("from-systemd", encoding="utf-8")
    secret = write(tmp_path, "from-file", "pw")
    config = load_config(
        None, {"CREDENTIALS_DIRECTORY": str(credentials), "EDGE_WORKER_AMQP__PASSWORD_FILE": str(secret)}
    )
    assert config.amqp.password == "from-file"


def test_credentials_directory_without_the_password_keeps_the_url(tmp_path: Path) -> None:
    config = load_config(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.amqp.password == ""
    assert broker_urls(config.amqp) == ["amqp://guest:guest@127.0.0.1:5672/%2F"]


def test_broker_urls_keep_every_url_host_and_port() -> None:
    amqp = AmqpConfig(url=("amqp://u:old@[::1]:5673/v", "amqps://h.example/", "amqp://h2"), password="p w")
    assert broker_urls(amqp) == [
        "amqp://u:p%20w@[::1]:5673/v",
        "amqps://guest:p%20w@h.example/",
        "amqp://guest:p%20w@h2",
    ]


def test_masked_dict_hides_every_secret(tmp_path: Path) -> None:
    secret = write(tmp_path, "file-secret", "pw")
    config = load_config(
        None,
        {
            "EDGE_WORKER_AMQP__URL": "amqp://app:url-secret@h1/%2F,amqps://app:url-secret-2@h2/",
            "EDGE_WORKER_AMQP__PASSWORD_FILE": str(secret),
            "EDGE_WORKER_EDGE__API_KEY": "api-secret",
        },
    )
    masked = masked_dict(config)
    text = json.dumps(masked)  # plain data, ready to print
    for secret_text in ("url-secret", "file-secret", "api-secret"):
        assert secret_text not in text
    assert masked["amqp"]["url"] == ["amqp://app:****@h1/%2F", "amqps://app:****@h2/"]
    assert masked["amqp"]["password"] == "****"
    assert masked["edge"]["api_key"] == "****"
    assert masked["amqp"]["password_file"] == str(secret)  # where it comes from is not a secret
    assert set(masked) == {"amqp", "edge", "worker", "log", "metrics"}
    assert masked["worker"]["concurrency"] == 8


def test_masked_dict_shows_empty_secrets_as_empty() -> None:
    masked = masked_dict(Config())
    assert masked["amqp"]["password"] == ""
    assert masked["edge"]["api_key"] == ""


def test_secrets_are_not_in_the_config_repr(tmp_path: Path) -> None:
    secret = write(tmp_path, "file-secret", "pw")
    config = load_config(
        None, {"EDGE_WORKER_AMQP__PASSWORD_FILE": str(secret), "EDGE_WORKER_EDGE__API_KEY": "api-secret"}
    )
    assert "file-secret" not in repr(config)
    assert "api-secret" not in repr(config)


def test_describe_url_masks_the_password_and_drops_the_query() -> None:
    assert describe_url("amqps://u:secret@h:5671/v?cacertfile=/x&heartbeat=5") == "amqps://u:****@h:5671/v"
    assert describe_url("amqp://h/") == "amqp://h/"


def test_environment_url_with_a_comma_in_its_password_is_one_url() -> None:
    # Commas separate URLs only where a new amqp(s):// URL starts: a password may contain one, and a
    # split inside it used to print the password's tail in the error.
    config = load_config(None, {"EDGE_WORKER_AMQP__URL": "amqp://app:pa,ss@rabbit/%2F, amqps://app:x,y@r2/"})
    assert config.amqp.url == ("amqp://app:pa,ss@rabbit/%2F", "amqps://app:x,y@r2/")


@pytest.mark.parametrize(
    ("key", "url", "message"),
    [
        ("AMQP__URL", "amqp://u:secret-pw@rabbit:abc/%2F", "amqp.url: expected amqp://"),
        ("AMQP__URL", "amqp://u:secret-pw@rabbit:99999/%2F", "amqp.url: expected amqp://"),
        ("EDGE__URL", "http://edge:port", "edge.url: expected http://host:port"),
        ("EDGE__URL", "http://edge:70000", "edge.url: expected http://host:port"),
    ],
)
def test_url_with_a_bad_port_names_the_key(key: str, url: str, message: str) -> None:
    error = config_error(env={f"EDGE_WORKER_{key}": url})
    assert message in error
    assert "secret-pw" not in error


@pytest.mark.parametrize("url", ["grpc://127.0.0.1:55000", "grpc://edge.local:55000/", "grpc://[::1]:55000"])
def test_grpc_url_is_accepted_with_its_port(url: str) -> None:
    pytest.importorskip("grpc")
    assert load_config(None, {"EDGE_WORKER_EDGE__URL": url}).edge.url == url


def test_grpc_url_without_the_grpc_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # what importlib finds when grpcio is not installed
    message = config_error(env={"EDGE_WORKER_EDGE__URL": "grpc://127.0.0.1:55000"})
    assert "edge.url: 'grpc://127.0.0.1:55000' speaks gRPC" in message
    assert "pip install 'edge-worker[grpc]'" in message
    # The HTTP transport needs nothing more.
    assert load_config(None, {"EDGE_WORKER_EDGE__URL": "http://127.0.0.1:55000"}).edge.url.startswith("http://")


@pytest.mark.parametrize("encoding", ["auto", "json", "bytes-array", "multipart"])
def test_every_chunk_encoding_is_accepted(encoding: str) -> None:
    assert load_config(None, {"EDGE_WORKER_EDGE__CHUNK_ENCODING": encoding}).edge.chunk_encoding == encoding
