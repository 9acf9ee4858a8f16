"""docs/asyncapi.yaml: valid for the AsyncAPI project's own parser, in step with docs/contract.md and the code.

Three kinds of check, kept apart so that a failure says which side moved:
- the parser (`@asyncapi/parser` from npm, run by tests/node/validate.mjs) accepts the document, and
  refuses a broken copy of it (so the check can fail);
- the document against the contract (docs/contract.md, and ../shared/spec/interface.md when it is beside
  the checkout or SHARED_DIR names it): the same error codes, dead-letter codes and reply keys; and
  contract.md's configuration keys against the shared page's and the code's;
- the document against the code: the error codes the code emits (read from its source), the reply keys and
  headers a real worker publishes (read from real replies over the real broker), and the document's JSON
  Schemas (checked with ajv) against those replies and against requests the worker's decoder accepts or
  rejects.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Producer, ReplyCollector
from tests.nodekit import ROOT, node_binary, npm_install

DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
CONTRACT = ROOT / "docs" / "contract.md"
NODE_TOOLS = ROOT / "tests" / "node"
# The codes docs/contract.md adds where the shared contract is silent (the edge ending a job with its own
# status ERROR): documented on purpose, so allowed in the comparison with the shared page only.
CODES_BEYOND_SHARED_CONTRACT = {"ERROR"}


def parse_document(path: Path) -> dict[str, Any]:
    node = node_binary()
    npm_install(NODE_TOOLS)
    result = subprocess.run(
        [node, str(NODE_TOOLS / "validate.mjs"), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout, f"validate.mjs printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    parsed: dict[str, Any] = json.loads(result.stdout)
    assert (result.returncode == 0) == parsed["valid"], (result.returncode, result.stderr[-2000:])
    return parsed


def validate_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check {message, part, value} items against the document's schemas (ajv, via validate-messages.mjs)."""
    node = node_binary()
    npm_install(NODE_TOOLS)
    result = subprocess.run(
        [node, str(NODE_TOOLS / "validate-messages.mjs"), str(DOCUMENT)],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(verdicts) == len(items)
    return verdicts


def as_json(value: Any) -> Any:
    """A msgpack value as JSON sees it: bins become (base64) strings, which the schemas call format binary."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value


@cache
def _parsed() -> str:
    return json.dumps(parse_document(DOCUMENT))


@pytest.fixture
def parsed() -> dict[str, Any]:
    value: dict[str, Any] = json.loads(_parsed())
    return value


def schemas(parsed: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = parsed["document"]["components"]["schemas"]
    return result


# -- the parser -----------------------------------------------------------------------------------------


def test_the_asyncapi_parser_accepts_the_document(parsed: dict[str, Any]) -> None:
    errors = [d for d in parsed["diagnostics"] if d["severity"] == "error"]
    assert parsed["valid"] and not errors, errors
    warnings = [d for d in parsed["diagnostics"] if d["severity"] == "warning"]
    assert not warnings, warnings  # the parser's own style rules too
    assert parsed["version"] == "3.0.0"
    assert parsed["channels"] == ["jobRequests", "jobReplies", "defaultReplies", "deadLetters"]
    assert parsed["operations"] == ["runJob", "sendDefaultReply", "deadLetter"]
    assert parsed["messages"] == ["JobRequest", "JobStatus", "DeadLetter"]
    doc = parsed["document"]
    assert doc["channels"]["jobRequests"]["address"] == "edge.jobs"
    assert doc["channels"]["deadLetters"]["address"] == "edge.jobs.dead"
    assert doc["channels"]["defaultReplies"]["address"] == "edge.replies"
    reply = doc["operations"]["runJob"]["reply"]
    assert reply["address"]["location"] == "$message.header#/reply_to"
    assert doc["components"]["messages"]["JobStatus"]["correlationId"]["location"] == "$message.payload#/correlation_id"
    dead = doc["components"]["messages"]["DeadLetter"]["headers"]
    assert {"x-error-code", "x-error-message"} <= set(dead["required"])


def test_the_parser_refuses_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a dangling $ref and a missing required field are both reported."""
    text = DOCUMENT.read_text()
    broken = text.replace("$ref: '#/components/schemas/ErrorCode'", "$ref: '#/components/schemas/NoSuchCode'", 1)
    broken = broken.replace("  version: 0.1.0\n", "", 1)
    assert broken != text
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = parse_document(path)
    assert not result["valid"]
    messages = " ".join(d["message"] for d in result["diagnostics"] if d["severity"] == "error")
    assert "NoSuchCode" in messages or "#/components/schemas/NoSuchCode" in json.dumps(result["diagnostics"])
    assert "version" in messages


# -- the document against the contract ------------------------------------------------------------------


def contract_section(number: int) -> str:
    text = CONTRACT.read_text()
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", text, re.S | re.M)
    assert match, f"docs/contract.md has no section {number}"
    return match.group(0)


def contract_error_codes() -> tuple[set[str], set[str]]:
    """(every reply code of §3's table, the codes whose row says dead-lettered), plus §3's dead-letter-only code."""
    codes: set[str] = set()
    dead: set[str] = set()
    for row in re.findall(r"^\| `([A-Z_]+)` \|(.*)$", contract_section(3), re.M):
        code, rest = row
        codes.add(code)
        cells = [c.strip() for c in rest.split("|")]
        if cells[2] == "yes":
            dead.add(code)
    only_dead = set(re.findall(r"never in a reply: `([A-Z_]+)`", contract_section(3)))
    return codes, dead | only_dead


def contract_reply_keys() -> set[str]:
    body = contract_section(2).split("### The body", 1)[1].split("###", 1)[0]
    keys: set[str] = set()
    for first_cell in re.findall(r"^\| ([^|]+) \|", body, re.M):
        keys.update(re.findall(r"`([a-z_]+)`", first_cell))
    return keys


def test_document_error_codes_are_the_contracts(parsed: dict[str, Any]) -> None:
    codes, dead = contract_error_codes()
    assert len(codes) >= 14
    assert set(schemas(parsed)["ErrorCode"]["enum"]) == codes
    assert set(schemas(parsed)["DeadLetterCode"]["enum"]) == dead
    assert len(schemas(parsed)["ErrorCode"]["enum"]) == len(codes)  # no code listed twice


def test_document_reply_keys_are_the_contracts(parsed: dict[str, Any]) -> None:
    body = schemas(parsed)["JobStatusBody"]
    assert set(body["properties"]) == contract_reply_keys()
    assert set(body["properties"]) - set(body["required"]) == {"results", "failures", "error"}


def test_contract_md_has_every_code_of_the_shared_contract() -> None:
    """docs/contract.md is kept in step with ../shared/spec/interface.md, when that page is beside the checkout."""
    shared = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "spec" / "interface.md"
    if not shared.is_file():
        pytest.skip(f"no shared contract at {shared} (set SHARED_DIR to compare)")
    paragraph = shared.read_text().split("Error codes:", 1)[1].split("\n\n", 1)[0]
    # The paragraph also names reply statuses in passing (`COMPLETE`, the final reply is `ERROR`).
    shared_codes = set(re.findall(r"`([A-Z][A-Z_]{3,})`", paragraph)) - {"COMPLETE", "ERROR"}
    ours, _ = contract_error_codes()
    assert ours - CODES_BEYOND_SHARED_CONTRACT == shared_codes


def contract_config_keys() -> set[str]:
    """`section.key` for every row of the configuration tables in docs/contract.md §6."""
    keys: set[str] = set()
    section = ""
    for line in contract_section(6).splitlines():
        heading = re.match(r"^### `\[(\w+)\]`", line)
        if heading:
            section = heading.group(1)
        cell = re.match(r"^\| ((?:`[a-z_.]+`(?:, )?)+) \|", line)
        if cell and section:
            for key in re.findall(r"`([a-z_.]+)`", cell.group(1)):
                keys.add(key if "." in key else f"{section}.{key}")
    return keys


def test_contract_md_has_every_config_key_of_the_shared_contract() -> None:
    shared = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "spec" / "interface.md"
    if not shared.is_file():
        pytest.skip(f"no shared contract at {shared} (set SHARED_DIR to compare)")
    block = shared.read_text().split("```toml", 1)[1].split("```", 1)[0]
    shared_keys: set[str] = set()
    section = ""
    for line in block.splitlines():
        heading = re.match(r"^\[(\w+)\]", line)
        if heading:
            section = heading.group(1)
        key = re.match(r"^#?\s*([a-z_]+) = ", line)
        if key and section:
            shared_keys.add(f"{section}.{key.group(1)}")
    ours = contract_config_keys()
    assert len(shared_keys) > 30
    assert shared_keys - ours == set(), "keys of the shared contract that docs/contract.md lacks"


def test_contract_md_lists_every_key_the_code_takes() -> None:
    """Every configuration key the code reads is documented in docs/contract.md §6."""
    import dataclasses

    from worker.config import Config

    code_keys = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        if section.name != "source"  # where the configuration came from, not a key
        for f in dataclasses.fields(getattr(Config(), section.name))
    } - {"amqp.password"}  # resolved from the password file or credential, never set as a key
    assert code_keys - contract_config_keys() == set()


# -- the document against the code ------------------------------------------------------------------------


def _constants(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _constants(node.body) | _constants(node.orelse)
    return set()


def codes_in_code() -> tuple[set[str], set[str]]:
    """Error codes the worker's source can emit: (reply codes, codes only ever given to a dead letter).

    Read from the source, so the check follows the code wherever it moves: a class attribute `code = "X"`,
    a keyword `code="X"`, a dict entry `"code": "X"`, and the first argument of a call whose name contains
    `dead_letter` (a code that goes straight to the dead-letter queue).
    """
    found: set[str] = set()
    dead: set[str] = set()
    skip = ("emulator", "_proto")
    for path in sorted((ROOT / "worker").rglob("*.py")):
        if any(part.startswith(skip) for part in path.relative_to(ROOT / "worker").parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "code" for t in item.targets
                    ):
                        found |= _constants(item.value)
                    if (
                        isinstance(item, ast.AnnAssign)
                        and isinstance(item.target, ast.Name)
                        and item.target.id == "code"
                        and item.value is not None
                    ):
                        found |= _constants(item.value)
            elif isinstance(node, ast.Call):
                found |= {c for kw in node.keywords if kw.arg == "code" for c in _constants(kw.value)}
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if "dead_letter" in name and node.args:
                    dead |= _constants(node.args[0])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        found |= _constants(value)
    codes = {c for c in found if re.fullmatch(r"[A-Z][A-Z_]+", c)}
    return codes, {c for c in dead if re.fullmatch(r"[A-Z][A-Z_]+", c)} - codes


def test_the_code_scan_finds_codes() -> None:
    """The source scan itself works: it sees codes from each place they live today."""
    codes, dead_only = codes_in_code()
    assert {"INVALID_REQUEST", "JOB_FAILED", "JOB_CANCELED", "TIMEOUT", "DELIVERY_LIMIT"} <= codes
    assert dead_only == {"REPLY_UNROUTABLE"}


def test_every_code_the_code_emits_is_in_the_document(parsed: dict[str, Any]) -> None:
    codes, dead_only = codes_in_code()
    assert codes - set(schemas(parsed)["ErrorCode"]["enum"]) == set(), "codes the code emits but the document lacks"
    assert dead_only <= set(schemas(parsed)["DeadLetterCode"]["enum"])


def test_code_emits_every_code_in_the_document__fails_until_reply_limits_land(parsed: dict[str, Any]) -> None:
    """MAY FAIL until REPLY_TOO_LARGE and REPLY_TO_FORBIDDEN (contract §3) are in the code on main.

    The document lists the contract's codes; this fails for each one the worker cannot yet emit.
    """
    codes, dead_only = codes_in_code()
    missing = set(schemas(parsed)["ErrorCode"]["enum"]) - codes
    assert missing == set(), f"contract codes the code does not emit yet: {sorted(missing)}"
    assert set(schemas(parsed)["DeadLetterCode"]["enum"]) <= codes | dead_only


TWO_SOURCES = {
    "model": {"identifier": "ed542963de", "version": "1.0.1"},
    "sources": {"cam-1": {"image": b"\x01" * 64}, "cam-2": {"image": b"FAIL on purpose"}},
    "request_id": "asyncapi-1",
    "updates": True,
}


def test_reply_keys_and_headers_a_real_worker_publishes_are_the_documents(
    parsed: dict[str, Any], emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    worker_factory(emulator.url).start()
    complete = producer.publish(TWO_SOURCES)  # COMPLETE with results and failures, after a SUBMITTED update
    rejected = producer.publish(None, raw=b"\xc1 not msgpack")  # REJECTED with error
    missing = producer.publish({"model": "nope", "version": "9.9.9", "sources": {"x": "y"}})  # ERROR
    finals = collector.wait_finals(3)
    assert finals[complete][0]["status"] == "COMPLETE" and finals[complete][0]["failures"]
    assert finals[rejected][0]["error"]["code"] == "INVALID_REQUEST"
    assert finals[missing][0]["error"]["code"] == "MODEL_NOT_FOUND"
    updates = [reply for _props, reply in collector.all if not reply["final"]]
    assert [u["status"] for u in updates] == ["SUBMITTED"]

    body = schemas(parsed)["JobStatusBody"]
    replies = [reply for _props, reply in collector.all]
    seen = set().union(*(set(r) for r in replies))
    always = set.intersection(*(set(r) for r in replies))
    assert seen == set(body["properties"]), "keys the worker emits vs the document's"
    assert always == set(body["required"]), "keys in every reply vs the document's required ones"
    assert set(body["properties"]["model"]["required"]) == set(finals[complete][0]["model"])
    assert set(body["properties"]["error"]["required"]) == set(finals[rejected][0]["error"])
    assert {r["status"] for r in replies} <= set(schemas(parsed)["Status"]["enum"])

    headers_schema = schemas(parsed)["ReplyHeaders"]
    documented = set(headers_schema["properties"])
    items: list[dict[str, Any]] = []
    for props, reply in collector.all:
        fields = {
            "content_type": props.content_type,
            "delivery_mode": props.delivery_mode,
            "correlation_id": props.correlation_id,
            "message_id": props.message_id,
            "type": props.type,
            "timestamp": props.timestamp,
            **(props.headers or {}),
        }
        present = {k for k, v in fields.items() if v is not None}
        assert present <= documented, present - documented
        assert set(headers_schema["required"]) <= present, set(headers_schema["required"]) - present
        assert fields["content_type"] == headers_schema["properties"]["content_type"]["const"]
        assert fields["type"] == headers_schema["properties"]["type"]["const"]
        assert fields["delivery_mode"] == headers_schema["properties"]["delivery_mode"]["const"]
        items.append({"message": "JobStatus", "part": "payload", "value": as_json(reply)})
        items.append({"message": "JobStatus", "part": "headers", "value": {k: fields[k] for k in present}})

    # Every real reply, body and properties, against the document's JSON Schemas (types, enums, required keys).
    verdicts = validate_messages(items)
    wrong = [
        (item["part"], item["value"].get("status"), v["errors"])
        for item, v in zip(items, verdicts, strict=True)
        if not v["valid"]
    ]
    assert not wrong, wrong


def test_schemas_accept_the_requests_the_worker_accepts_and_refuse_what_it_rejects() -> None:
    """The request schema against requests the worker's own decoder accepts or rejects (no broker needed)."""
    import msgpack

    from worker.errors import InvalidRequest
    from worker.messages import decode_request

    def request_from_map(request: object) -> None:
        decode_request(msgpack.packb(request, use_bin_type=True), None, max_request_bytes=1 << 20)

    good = [
        TWO_SOURCES,
        {"model": "sha256", "version": "1.0.0", "sources": {"image": b"\x00"}},  # the shorthand
        {"model": {"identifier": "sleep", "version": "1.0.0"}, "sources": {"job": {"seconds": "0.1"}}, "x": 1},
        {"model": "m", "version": "1", "sources": {"a": {"b": "t"}}, "timeout": 2.5, "results": False},
    ]
    bad = [
        {"model": "sha256", "sources": {"image": b"\x00"}},  # a str model without version
        {"model": {"identifier": "a", "version": "1"}, "sources": {"a/b": {"c": b"x"}}},  # '/' in a name
        {"model": {"identifier": "a", "version": "1"}, "sources": {"a": {"c": 1}}},  # an int input
        {"model": {"identifier": "a", "version": "1"}, "sources": {}},  # no input item
        {"model": {"identifier": "a", "version": "1"}, "sources": {"a": {"c": b"x"}}, "timeout": 0},
        {"model": {"identifier": "a", "version": "1"}, "sources": {"a": {"c": b"x"}}, "explain": "yes"},
        {"sources": {"a": {"c": b"x"}}},  # no model
    ]
    for request in good:
        request_from_map(request)  # the worker accepts it
    for request in bad:
        with pytest.raises(InvalidRequest):
            request_from_map(request)
    items = [{"message": "JobRequest", "part": "payload", "value": as_json(r)} for r in good + bad]
    verdicts = [v["valid"] for v in validate_messages(items)]
    assert verdicts == [True] * len(good) + [False] * len(bad)
    # A reply that breaks the schema is refused too: the reply check above can fail.
    broken = [{"message": "JobStatus", "part": "payload", "value": {"status": "DONE", "final": True}}]
    assert validate_messages(broken)[0]["valid"] is False
