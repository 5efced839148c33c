"""The organization's command line against a real server (`gradlift serve`: API + worker processes):
finetune -> upload -> upgrade --watch -> download -> chat, a failing upgrade, an interrupted download."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client.download import fetch
from app.client.http import Api
from app.storage import BlobStore
from tests.e2e.services import BIN, REPO, Services
from tests.e2e.test_service import PROBE, assert_changes_the_llm

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def server(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, dict]]:
    """A running service and the organization's environment for the command line."""
    root = tmp_path_factory.mktemp("cli")
    env = {"GRADLIFT_DATA_DIR": str(root / "data"), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir)}
    with Services(env, root / "logs") as services:
        services.serve()
        key = services.make_key("acme")
        yield services, {"GRADLIFT_URL": services.base_url, "GRADLIFT_API_KEY": key,
                         "GRADLIFT_CACHE_DIR": str(root / "cache"), "GRADLIFT_DATA_DIR": str(root / "data")}


def gradlift(server: tuple[Services, dict], *args: object, stdin: str | None = None,
             timeout_s: float = 300, key: str | None = None) -> subprocess.CompletedProcess[str]:
    services, client_env = server
    # The organization's machine knows the service's URL and its key, nothing of the server's settings.
    env = {k: v for k, v in services.env.items() if not k.startswith("GRADLIFT_")}
    env |= {k: v for k, v in client_env.items() if k != "GRADLIFT_DATA_DIR"}
    if key is not None:
        env["GRADLIFT_API_KEY"] = key
    return subprocess.run([str(BIN / "gradlift"), *map(str, args)], env=env, cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=timeout_s)


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout.strip().splitlines()[-1]


def write_data(path: Path, task: str) -> Path:
    from models.data.tasks import get_task, make_splits

    examples = make_splits(get_task(task), 10, 300, 10).private
    rows = [{"prompt": e.prompt, "answer": e.answer} for e in examples[:200]]
    rows += [{"messages": [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.answer}]}
             for e in examples[200:]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_finetune_upload_upgrade_download_chat(server: tuple[Services, dict], tmp_path: Path,
                                               toy_pairs_dir: Path) -> None:
    services, env = server
    times = {}
    start = time.perf_counter()
    data = write_data(tmp_path / "ours.jsonl", "rotate-3")
    tuned = gradlift(server, "finetune", "--pair", "toy", "--data", data, "--out", tmp_path / "tiny",
                     "--steps", 40, "--dp-epsilon", 8)
    assert last_line(tuned) == str(tmp_path / "tiny") and "epsilon spent" in tuned.stdout
    meta = json.loads((tmp_path / "tiny" / "gradlift.json").read_text())
    assert meta["pair"] == "toy" and meta["examples"] == 300 and meta["privacy"]["dp_sgd"]["epsilon_spent"] <= 8
    cached = Path(env["GRADLIFT_CACHE_DIR"]) / "pairs"
    assert next(cached.rglob("model.safetensors")).read_bytes() == (toy_pairs_dir / "toy/tiny/model.safetensors"
                                                                      ).read_bytes()
    times["finetune"] = time.perf_counter() - start

    checkpoint = last_line(gradlift(server, "upload", tmp_path / "tiny"))
    watched = gradlift(server, "upgrade", checkpoint, "--watch", "--timeout", 240)
    delta = last_line(watched)
    assert "100%|" in watched.stderr  # the live progress bar reached its end
    assert_stages_drawn_with_their_own_percentage(server, delta, watched.stderr)
    times["upload+upgrade"] = time.perf_counter() - start - times["finetune"]

    out = tmp_path / "llm"
    assert last_line(gradlift(server, "download", delta, "--out", out)) == str(out)
    listed = json.loads((out / "gradlift.json").read_text())
    assert listed["id"] == delta and listed["sources"][0]["id"] == checkpoint
    for item in listed["files"]:
        assert hashlib.sha256((out / item["name"]).read_bytes()).hexdigest() == item["sha256"]
    assert_changes_the_llm(toy_pairs_dir, out)

    # Piped in, each line is a conversation of its own: the second question gets the first one's answer.
    said = gradlift(server, "chat", delta, "--max-tokens", 8, "--temperature", 0, stdin=PROBE + "\n" + PROBE + "\n")
    assert said.returncode == 0, said.stderr
    with services.client(env["GRADLIFT_API_KEY"]) as client:  # the same turn, not streamed
        reply = client.post("/v1/chat/completions", json={"model": delta, "max_tokens": 8, "temperature": 0,
                                                          "messages": [{"role": "user", "content": PROBE}]})
    assert said.stdout == 2 * (reply.json()["choices"][0]["message"]["content"] + "\n")
    times["total"] = time.perf_counter() - start
    log.info("command line end to end, seconds: %s", {k: round(v, 1) for k, v in times.items()})


def assert_stages_drawn_with_their_own_percentage(server: tuple[Services, dict], delta: str, drawn: str) -> None:
    """Every line the bar drew names a stage beside a percentage that stage's events reached."""
    services, env = server
    with services.client(env["GRADLIFT_API_KEY"]) as client:
        job = client.get(f"/v1/upgrades/{client.get(f'/v1/deltas/{delta}').json()['upgrade_id']}").json()
    reached: dict[str, set[int]] = {}
    for event in job["events"]:
        reached.setdefault(event["stage"][:27], set()).add(round(100 * event["progress"]))
    lines = [m.groups() for m in re.finditer(r"([a-zA-Z'][^\r\n%|]*?)\s+(\d+)%\|", drawn)]
    # The bar's first line shows the job's status before any event is read.
    assert lines and {stage for stage, _ in lines} - {"queued", "running"} <= set(reached), (lines, reached)
    for stage, percent in lines:
        assert int(percent) in reached.get(stage, set()) | {0}, (stage, percent, reached)


def test_keys_create_prints_the_key_and_no_log_lines(server: tuple[Services, dict]) -> None:
    services, _ = server
    done = subprocess.run([str(BIN / "gradlift"), "keys", "create", "--org", "initech"], env=services.env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1].startswith("glk_"), done.stderr
    assert "INFO" not in done.stdout + done.stderr and "alembic" not in done.stderr, done.stderr


def test_watch_exits_non_zero_and_says_why_an_upgrade_failed(server: tuple[Services, dict],
                                                             toy_pairs_dir: Path) -> None:
    _, env = server
    init = toy_pairs_dir / "toy" / "tiny_lora_init.safetensors"  # a valid upload: an update of zero
    checkpoint = last_line(gradlift(server, "upload", init, "--pair", "toy"))
    data = Path(env["GRADLIFT_DATA_DIR"])
    BlobStore(data / "blobs", data / "tmp").path(hashlib.sha256(init.read_bytes()).hexdigest()).unlink()
    done = gradlift(server, "upgrade", checkpoint, "--watch", "--timeout", 120)
    assert done.returncode == 1, done.stderr
    assert "failed: the stored adapter of checkpoint" in done.stderr and "(not_found)" in done.stderr


def test_an_interrupted_download_resumes_and_checks_sha256(server: tuple[Services, dict], tmp_path: Path) -> None:
    services, env = server
    with Api(services.base_url, env["GRADLIFT_API_KEY"]) as api:
        item = next(f for f in api.get("/v1/pairs/toy/tiny/files")["data"] if f["name"] == "model.safetensors")
        path, dest = "/v1/pairs/toy/tiny/files/model.safetensors", tmp_path / "model.safetensors"
        part = tmp_path / "model.safetensors.part"

        def cut(written: int) -> None:
            if written >= 100_000:
                raise ConnectionResetError("connection dropped")

        with pytest.raises(ConnectionResetError):
            fetch(api, path, dest, item["sha256"], progress=False, on_chunk=cut)
        kept = part.stat().st_size
        assert 100_000 <= kept < item["bytes"] and not dest.exists()
        assert fetch(api, path, dest, item["sha256"], progress=False) == item["bytes"] - kept  # the rest only
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == item["sha256"] and not part.exists()
        assert fetch(api, path, dest, item["sha256"], progress=False) == 0  # already there

        dest.unlink()
        part.write_bytes(b"\0" * 5000)  # a damaged partial file: resumed, fails the check, fetched whole
        assert fetch(api, path, dest, item["sha256"], progress=False) == item["bytes"] - 5000 + item["bytes"]
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == item["sha256"]


def test_two_organizations_pool_their_checkpoints_from_the_command_line(server: tuple[Services, dict],
                                                                        toy_adapter: Path, tmp_path: Path) -> None:
    from models.pairs import PairStore
    from models.training.finetune import finetune_adapter

    services, env = server
    pair = PairStore(Path(services.env["GRADLIFT_PAIRS_DIR"])).get("toy")
    theirs = finetune_adapter(pair, pair.spec.tasks[0], tmp_path / "globex", steps=30, seed=1)
    globex = services.make_key("globex")
    collab = last_line(gradlift(server, "collab", "open", "shared rotations", "--pair", "toy"))
    globex_id = last_line(gradlift(server, "whoami", key=globex))
    assert last_line(gradlift(server, "collab", "invite", collab, globex_id)).startswith(f"invited {globex_id}")
    assert "you: joined" in gradlift(server, "collab", "join", collab, key=globex).stdout
    for adapter, key in ((toy_adapter, None), (theirs, globex)):
        checkpoint = last_line(gradlift(server, "upload", adapter, key=key))
        assert last_line(gradlift(server, "collab", "contribute", collab, checkpoint, key=key)).startswith("contrib_")
    shown = gradlift(server, "collab", "show", collab, key=globex).stdout
    assert shown.count("contribution contrib_") == 2 and shown.count("): joined") == 2  # two members, joined
    delta = last_line(gradlift(server, "collab", "upgrade", collab, "--watch", "--timeout", 300))
    assert delta.startswith("dlt_")
    out = last_line(gradlift(server, "download", delta, "--out", tmp_path / "pooled", key=globex))  # a member
    assert (Path(out) / "adapter_model.safetensors").is_file()
    refused = gradlift(server, "collab", "delete", collab)
    assert refused.returncode == 1 and "1 pooled delta(s)" in refused.stderr
    left = last_line(gradlift(server, "collab", "leave", collab, key=globex))
    assert left == f"deleted collaboration.member {globex_id}"
    gone = gradlift(server, "download", delta, "--out", tmp_path / "after", key=globex)  # left: no access
    assert gone.returncode == 1 and f"No delta with id {delta!r}" in gone.stderr
