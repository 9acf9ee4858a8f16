"""Runs inside the SDK's own environment (tests/sdk_env.py), never in the project's: the edge SDK's
EdgeClient against an edge's gRPC address. Reads its inputs as JSON on stdin, prints what the SDK
answered as JSON on stdout."""

import base64
import json
import sys

from modzy.edge.client import EdgeClient  # type: ignore[import-not-found]
from modzy.error import ApiError  # type: ignore[import-not-found]


def main() -> None:
    spec = json.load(sys.stdin)
    model = spec["model"]
    embedded = {
        source: {name: base64.b64decode(value) for name, value in inputs.items()}
        for source, inputs in spec["embedded"].items()
    }
    out: dict[str, object] = {}
    with EdgeClient(spec["host"], spec["port"]) as client:
        for kind, job_id in (
            ("embedded", client.submit_embedded(model["identifier"], model["version"], embedded, explain=True)),
            ("text", client.submit_text(model["identifier"], model["version"], spec["text"])),
        ):
            first = client.get_job_details(job_id)
            # EdgeClient.block_until_complete drops the details EdgeClient.jobs' one returns: read them after.
            blocked = client.block_until_complete(job_id, timeout=10)
            final = client.get_job_details(job_id)
            out[kind] = {
                "job": job_id,
                "first": first,
                "blocked": blocked,
                "final": final,
                "results": client.get_results(job_id),
            }
        out["all_jobs"] = client.jobs.get_all_job_details(timeout=5)
        try:
            client.submit_text(model["identifier"], "0.0.0-missing", {"input.txt": "x"})
            out["unknown_model"] = None
        except ApiError as exc:
            out["unknown_model"] = str(exc)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
