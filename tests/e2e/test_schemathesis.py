"""The API against its own OpenAPI document: `schemathesis run` with every check (server errors, statuses,
content types, headers, response schemas, schema-valid data accepted and invalid data refused, 405s with
Allow, auth, resources just created), a bounded number of examples per operation, against a real server
on the toy pair. Exceptions, each with its reason, are in schemathesis.toml beside this file. CI runs one
fixed seed, so a change is judged on the same cases as the last; GRADLIFT_SCHEMATHESIS_SEED=random (or a
number) explores others, and a failure prints the seed that replays it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.services import BIN, Services

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = 25  # per operation and phase: ~30 s on 2 cores
SEED = os.environ.get("GRADLIFT_SCHEMATHESIS_SEED", "20261130")


def test_the_api_keeps_its_openapi_document(tmp_path: Path, toy_pairs_dir: Path) -> None:
    # The fuzzer sends hundreds of keys that are not valid from one address on purpose (its auth checks):
    # the throttle would answer them 429 (tests/e2e/test_keys.py tests it).
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir),
           "GRADLIFT_AUTH_FAILURE_LIMIT": "1000000"}
    with Services(env, tmp_path / "logs") as services:
        services.migrate()
        services.api()
        key = services.make_key("acme")
        # The first chat request loads the pair's LLM (seconds); the response-time check is for what comes after.
        warm = services.client(key).post("/v1/chat/completions", json={
            "model": "toy-llm", "messages": [{"role": "user", "content": "rot ?: ab #### "}], "max_tokens": 1})
        assert warm.status_code == 200, warm.text
        command = [str(BIN / "schemathesis"), "--config-file", str(CONFIG), "run", f"{services.base_url}/openapi.json",
                   "--header", f"Authorization: Bearer {key}", "--checks", "all", "--max-examples", str(EXAMPLES),
                   "--no-shrink", "--max-failures", "20", "--request-timeout", "30",
                   *(["--seed", SEED] if SEED != "random" else [])]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=services.env,
                              cwd=tmp_path)  # its cache of crashes goes there, not into the checkout
        assert done.returncode == 0, _readable(done.stdout)[-12000:] + done.stderr[-2000:] + services.log_tail("api")
        assert " passed" in done.stdout  # it ran cases


def _readable(report: str) -> str:
    """The report with each line cut to 300 characters: a reproducing curl of a 10 MB body would fill the
    failure's message and hide what failed."""
    return "\n".join(line if len(line) <= 300 else line[:300] + f" <{len(line)} characters>"
                     for line in report.splitlines())
