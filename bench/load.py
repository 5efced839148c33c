"""Load: a crowd of chat clients at once, with uploads, upgrades and light requests from other
organizations, against one `gradlift serve` on the loopback; latency per kind of request, errors, 429s.

    python -m bench.load --chats 400 --duration 60 --out bench/results/load-toy.json

`--chats` clients (spread over `--chat-orgs` organizations) each send chat requests one after another
(half of them streamed, 8 greedy tokens on the pair's base LLM), for `--duration` seconds or
`--requests` requests each, whichever ends first; a 429 is honoured as clients do (its Retry-After, plus
up to half of it again at random). Meanwhile two other organizations each upload an adapter, upgrade it
and follow the upgrade until it ends, `--uploads` times; three more send light requests (lists, their
organization, the pairs) four times a second; and /healthz is asked ten times a second. The three kinds
of client run in processes of their own, so a busy chat client does not delay the probes' clocks. The
server runs with its default limits (GRADLIFT_CHAT_MAX_BATCH, _QUEUE, _PER_ORG).

Targets at 400 concurrent chats: no 5xx, no dropped connection, /healthz p95 under 200 ms, the other
organizations' light requests p95 under 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
STARTED = time.perf_counter()

PROMPT = "rot ?: abcde #### "
LIGHT_PATHS = ["/v1/checkpoints", "/v1/upgrades", "/v1/deltas", "/v1/models", "/v1/organizations/me", "/v1/pairs"]
TARGETS = {"healthz_p95_s": 0.2, "light_p95_s": 0.5}


def record(records: list, kind: str, start: float, status: int, error: str = "") -> None:
    """One request: its kind, HTTP status (0: no answer, the connection failed), seconds, what went wrong."""
    records.append({"kind": kind, "status": status, "seconds": time.perf_counter() - start, "error": error[:200]})


async def _call(records: list, kind: str, request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """Await a request (it starts only now), and record how it went."""
    start = time.perf_counter()
    try:
        response = await request
    except httpx.HTTPError as exc:
        record(records, kind, start, 0, f"{type(exc).__name__}: {exc}")
        return None
    record(records, kind, start, response.status_code, "" if response.status_code < 500 else response.text)
    return response


async def _chat_client(http: httpx.AsyncClient, key: str, index: int, deadline: float, cap: int,
                       records: list) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    stream = index % 2 == 1
    body = {"model": "toy-llm", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8,
            "temperature": 0, "stream": stream}

    async def send() -> httpx.Response:
        if not stream:
            return await http.post("/v1/chat/completions", json=body, headers=headers)
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            await response.aread()  # every event, to [DONE]
            return response

    for _ in range(cap):
        if time.monotonic() >= deadline:
            return
        response = await _call(records, "chat (stream)" if stream else "chat", send())
        if response is not None and response.status_code == 429:
            wait = float(response.headers.get("retry-after", "1"))
            await asyncio.sleep(wait * (1 + random.random() / 2))


def _limits(clients: int) -> httpx.Limits:
    """A connection per client, kept alive as clients keep them (httpx's 5 s; the API keeps them 30 s)."""
    return httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8, keepalive_expiry=5.0)


def _write(out: str, records: list) -> None:
    """A client process's records, and the CPU seconds it spent (a starved client would inflate latency)."""
    Path(out).write_text(json.dumps({"records": records, "cpu_s": time.process_time()}))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def chat_load(url: str, keys: list[str], clients: range, deadline: float, cap: int, out: str) -> None:
    """Chat clients `clients` (client i with key i mod len(keys)); records to `out` (JSON)."""
    async def main() -> list:
        records: list = []
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=_limits(len(clients))) as http:
            await asyncio.gather(*(_chat_client(http, keys[i % len(keys)], i, deadline, cap, records)
                                   for i in clients))
        return records

    _write(out, asyncio.run(main()))


async def _upgrade_client(http: httpx.AsyncClient, key: str, adapter: bytes, deadline: float, uploads: int,
                          records: list) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(uploads):
        if time.monotonic() >= deadline:
            return
        files = {"file": ("adapter_model.safetensors", adapter)}
        uploaded = await _call(records, "upload", http.post("/v1/checkpoints", headers=headers, data={"pair": "toy"},
                                                            files=files))
        if uploaded is None or uploaded.status_code != 200:
            continue
        body = {"pair": "toy", "checkpoint_ids": [uploaded.json()["id"]]}
        made = await _call(records, "upgrade", http.post("/v1/upgrades", headers=headers, json=body))
        if made is None or made.status_code != 200:
            continue
        job_id, start = made.json()["id"], time.perf_counter()
        while time.monotonic() < deadline + 120:
            await asyncio.sleep(0.5)
            job = await _call(records, "upgrade status", http.get(f"/v1/upgrades/{job_id}", headers=headers))
            if job is not None and job.status_code == 200 and job.json()["status"] in ("succeeded", "failed"):
                records.append({"kind": f"upgrade {job.json()['status']}", "status": 200,
                                "seconds": time.perf_counter() - start, "error": ""})
                break


def upgrade_load(url: str, keys: list[str], adapter: bytes, deadline: float, uploads: int, out: str) -> None:
    async def main() -> list:
        records: list = []
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=_limits(8)) as http:
            await asyncio.gather(*(_upgrade_client(http, key, adapter, deadline, uploads, records) for key in keys))
        return records

    _write(out, asyncio.run(main()))


async def _probe(http: httpx.AsyncClient, kind: str, paths: list[str], headers: dict, period_s: float,
                 deadline: float, records: list) -> None:
    i = 0
    while time.monotonic() < deadline:
        path = paths[i % len(paths)]
        await _call(records, kind, http.get(path, headers=headers))
        i += 1
        await asyncio.sleep(period_s)


async def _quiet_chat(http: httpx.AsyncClient, key: str, deadline: float, records: list) -> None:
    body = {"model": "toy-llm", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8, "temperature": 0}
    while time.monotonic() < deadline:
        await _call(records, "chat from a quiet client", http.post("/v1/chat/completions", json=body,
                                                                   headers={"Authorization": f"Bearer {key}"}))
        await asyncio.sleep(1)


def probes(url: str, keys: list[str], deadline: float, out: str) -> None:
    """/healthz ten times a second; light requests of each key's organization but the last four times a
    second; a chat request of the last key's organization once a second (from a process the crowd does
    not slow down: what the server itself takes, a 429 included when the pair is full)."""
    async def main() -> list:
        records: list = []
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=_limits(8)) as http:
            await asyncio.gather(_probe(http, "healthz", ["/healthz"], {}, 0.1, deadline, records),
                                 _quiet_chat(http, keys[-1], deadline, records),
                                 *(_probe(http, "light (other organizations)", LIGHT_PATHS[i:] + LIGHT_PATHS[:i],
                                          {"Authorization": f"Bearer {key}"}, 0.25, deadline, records)
                                   for i, key in enumerate(keys[:-1])))
        return records

    _write(out, asyncio.run(main()))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _kind(r: dict) -> str:
    """Chat requests are told apart by their answer: a 429 comes at once, an answer after decoding."""
    if not r["kind"].startswith("chat"):
        return r["kind"]
    return f"{r['kind']}: {'answered' if 200 <= r['status'] < 300 else '429' if r['status'] == 429 else 'other'}"


def summarise(records: list[dict]) -> dict[str, dict]:
    """Per kind: counts by outcome, and p50 / p95 / max seconds of the answered requests."""
    kinds: dict[str, dict] = {}
    for kind in sorted({_kind(r) for r in records}):
        rows = [r for r in records if _kind(r) == kind]
        answered = [r["seconds"] for r in rows if r["status"]]
        kinds[kind] = {"requests": len(rows), "2xx": sum(200 <= r["status"] < 300 for r in rows),
                       "429": sum(r["status"] == 429 for r in rows),
                       "other 4xx": sum(400 <= r["status"] < 500 and r["status"] != 429 for r in rows),
                       "5xx": sum(r["status"] >= 500 for r in rows),
                       "dropped": sum(r["status"] == 0 for r in rows),
                       "p50_s": percentile(answered, 0.5), "p95_s": percentile(answered, 0.95),
                       "max_s": max(answered, default=None),
                       "errors": sorted({r["error"] for r in rows if r["error"]})[:5]}
    return kinds


def verdict(kinds: dict[str, dict]) -> dict[str, bool]:
    light = kinds.get("light (other organizations)", {}).get("p95_s")
    health = kinds.get("healthz", {}).get("p95_s")
    return {"no 5xx": all(k["5xx"] == 0 for k in kinds.values()),
            "no dropped connection": all(k["dropped"] == 0 for k in kinds.values()),
            "healthz p95 < 200 ms": health is not None and health < TARGETS["healthz_p95_s"],
            "light p95 < 500 ms": light is not None and light < TARGETS["light_p95_s"]}


def _adapter_bytes(pair) -> bytes:  # noqa: ANN001 - a models.pairs.Pair
    """A plausible fine-tuned TinyLM adapter: the published init plus a small update."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(0)
    init = pair.init("tiny")
    return save({k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in init.items()})


def _serve(work: Path, pairs_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLIFT_")}
    env.update(GRADLIFT_DATA_DIR=str(work / "data"), GRADLIFT_PAIRS_DIR=str(pairs_dir),
               GRADLIFT_DEFAULT_PAIR="toy", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    with open(work / "serve.log", "ab") as log:
        proc = subprocess.Popen([str(BIN / "gradlift"), "serve", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc, env
        except httpx.TransportError:
            time.sleep(0.25)
    proc.kill()
    raise TimeoutError(f"gradlift serve did not start; see {work / 'serve.log'}")


def _keys(env: dict[str, str], names: list[str]) -> list[str]:
    return [subprocess.run([str(BIN / "gradlift"), "keys", "create", "--org", name], env=env, check=True,
                           capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1]
            for name in names]


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def _load(url: str, server_pid: int, keys: tuple[list[str], list[str], list[str]], adapter: bytes, work: Path,
          args: argparse.Namespace) -> tuple[list[dict], dict[str, float], float]:
    """The clients, in processes of their own until the deadline: (records, CPU seconds, wall seconds)."""
    chat_keys, upgrade_keys, light_keys = keys
    deadline = time.monotonic() + args.duration
    context = multiprocessing.get_context("spawn")
    shares = [range(p, args.chats, args.chat_processes) for p in range(args.chat_processes)]
    jobs = {f"chat-{p}": context.Process(target=chat_load, args=(url, chat_keys, share, deadline, args.requests,
                                                                 str(work / f"chat-{p}.json")))
            for p, share in enumerate(shares)}
    jobs["upgrade"] = context.Process(target=upgrade_load, args=(url, upgrade_keys, adapter, deadline, args.uploads,
                                                                 str(work / "upgrade.json")))
    jobs["probes"] = context.Process(target=probes, args=(url, light_keys, deadline, str(work / "probes.json")))
    server_cpu, started = cpu_seconds(server_pid), time.perf_counter()
    for job in jobs.values():
        job.start()
    for job in jobs.values():
        job.join(args.duration + 600)
    seconds, server_cpu = time.perf_counter() - started, cpu_seconds(server_pid) - server_cpu
    outputs = {name: json.loads((work / f"{name}.json").read_text()) for name in jobs}
    cpu = {"API process": server_cpu, "chat clients": sum(o["cpu_s"] for n, o in outputs.items() if n[:4] == "chat"),
           "upgrade clients": outputs["upgrade"]["cpu_s"], "probes": outputs["probes"]["cpu_s"]}
    return [r for output in outputs.values() for r in output["records"]], cpu, seconds


def run(args: argparse.Namespace) -> dict:
    from bench.serving import ready_pair  # torch: in this process only, not in the clients' (spawned) ones

    pair = ready_pair(args.data_dir, "toy", None)
    adapter = _adapter_bytes(pair)
    with tempfile.TemporaryDirectory(prefix="gradlift-load-") as tmp:
        work = Path(tmp)
        proc, env = _serve(work, pair.root.parent, args.port)
        try:
            url = f"http://127.0.0.1:{args.port}"
            chat_keys = _keys(env, [f"chat-{i}" for i in range(args.chat_orgs)])
            upgrade_keys = _keys(env, ["upload-0", "upload-1"])
            light_keys = _keys(env, [f"light-{i}" for i in range(3)] + ["quiet-chat"])
            warm = httpx.post(f"{url}/v1/chat/completions", timeout=300,
                              headers={"Authorization": f"Bearer {chat_keys[0]}"},
                              json={"model": "toy-llm", "messages": [{"role": "user", "content": PROMPT}],
                                    "max_tokens": 2})
            warm.raise_for_status()  # the engine is loaded before the clock starts
            progress(f"server up, chat warm; {args.chats} chat clients for up to {args.duration:.0f} s")
            load = os.getloadavg()[0]
            records, cpu, seconds = _load(url, proc.pid, (chat_keys, upgrade_keys, light_keys), adapter, work, args)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        log = (work / "serve.log").read_text(errors="replace")
    kinds = summarise(records)
    return {"chats": args.chats, "chat_orgs": args.chat_orgs, "chat_processes": args.chat_processes,
            "duration_s": args.duration,
            "requests_cap": args.requests, "uploads_per_org": args.uploads, "wall_s": seconds,
            "load_average_1m_before": load, "load_average_1m_after": os.getloadavg()[0], "cpus": os.cpu_count(),
            "cpu_s": cpu, "kinds": kinds, "targets": verdict(kinds),
            "server_log": log}


def report(r: dict) -> None:
    print(f"{r['chats']} chat clients over {r['chat_orgs']} organizations, 2 organizations uploading and upgrading, "
          f"3 sending light requests, /healthz probed; {r['wall_s']:.0f} s on {r['cpus']} CPUs "
          f"(load average {r['load_average_1m_before']:.1f} -> {r['load_average_1m_after']:.1f})")
    print(f"{'kind':32} {'requests':>8} {'2xx':>6} {'429':>6} {'4xx':>5} {'5xx':>4} {'dropped':>7} "
          f"{'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    for kind, k in r["kinds"].items():
        times = " ".join(f"{v:7.3f}" if v is not None else "      -" for v in (k["p50_s"], k["p95_s"], k["max_s"]))
        print(f"{kind:32} {k['requests']:8} {k['2xx']:6} {k['429']:6} {k['other 4xx']:5} {k['5xx']:4} "
              f"{k['dropped']:7} {times}")
    print("CPU seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in r["cpu_s"].items()))
    for target, ok in r["targets"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="holds pairs/ (the toy pair, built if missing)")
    parser.add_argument("--chats", type=int, default=400, help="chat clients at once")
    parser.add_argument("--chat-orgs", type=int, default=8, help="organizations the chat clients belong to")
    parser.add_argument("--chat-processes", type=int, default=4, help="processes the chat clients run in")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--requests", type=int, default=200, help="at most this many requests per chat client")
    parser.add_argument("--uploads", type=int, default=3, help="uploads (each upgraded) per uploading organization")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--out", type=Path, default=Path("bench/results/load-toy.json"))
    args = parser.parse_args()
    results = run(args)
    report(results)
    log = results.pop("server_log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {args.out}", file=sys.stderr)
    if not all(results["targets"].values()):
        args.out.with_suffix(".log").write_text(log)
        print(f"a target was missed: the server's log is in {args.out.with_suffix('.log')}", file=sys.stderr)
    sys.exit(0 if all(results["targets"].values()) else 1)


if __name__ == "__main__":
    main()
