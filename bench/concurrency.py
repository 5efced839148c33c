"""Many clients at once: aggregate tokens/s of the chat endpoint with requests decoded together
(GRADLIFT_CHAT_MAX_BATCH) against each request decoding alone in its own thread (max batch 1).

    python -m bench.concurrency --pair toy --out bench/results/concurrency-toy.json
    python -m bench.concurrency --pair smol --clients 8 --requests 2 --tokens 24 --out ...

One `gradlift api` process per setting runs side by side on the same pair and deltas; `--clients`
threads each send `--requests` chat requests in a row, client i on delta i (every request on another
adapter than its neighbours), greedy, `min_tokens` = `max_tokens` = `--tokens` so every request costs the
same. The settings take turns, pass by pass (`--rounds`), as in `bench.serving`; the table gives medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import torch

from bench import serving

SETTINGS = {  # name -> the API's GRADLIFT_* settings
    "alone (max batch 1)": {"GRADLIFT_CHAT_MAX_BATCH": "1"},
    "batched (max batch 8)": {"GRADLIFT_CHAT_MAX_BATCH": "8"},
    "batched, 2 torch threads": {"GRADLIFT_CHAT_MAX_BATCH": "8", "GRADLIFT_CHAT_TORCH_THREADS": "2"},
}


def one_pass(url: str, key: str, deltas: list[str], prompts: list[str], clients: int, requests: int,
             tokens: int) -> dict:
    """`clients` threads at once; tokens/s over the whole pass and each request's seconds."""
    latencies: list[float] = []
    counted: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=600, headers={"Authorization": f"Bearer {key}"}) as http:
            barrier.wait(timeout=60)
            for j in range(requests):
                body = {"model": deltas[i % len(deltas)], "temperature": 0, "max_tokens": tokens,
                        "min_tokens": tokens,
                        "messages": [{"role": "user", "content": prompts[(i * requests + j) % len(prompts)]}]}
                start = time.perf_counter()
                response = http.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    errors.append(response.text)
                    return
                latencies.append(time.perf_counter() - start)
                counted.append(response.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]}")
    return {"seconds": seconds, "tokens": sum(counted), "tokens_per_s": sum(counted) / seconds,
            "latency_s_median": serving.median(latencies), "latency_s_max": max(latencies)}


def run(data_dir: Path, pair_id: str, clients: int, requests: int, tokens: int, rounds: int, port: int) -> dict:
    from models.data.tasks import get_task, make_splits

    pair = serving.ready_pair(data_dir, pair_id, None)
    task = pair.spec.tasks[0]
    prompts = [ex.prompt for ex in make_splits(get_task(task), seed=pair.spec.seed).test[:64]]
    results: dict = {"pair": pair.id, "task": task, "clients": clients, "requests_per_client": requests,
                     "tokens_per_request": tokens, "rounds": rounds, "device": serving.device_name(),
                     "settings": SETTINGS, "load_average_1m": {"start": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory(prefix="gradlift-concurrency-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        folders = serving.upgraded_adapters(pair, task, work, clients)
        servers = {}
        for i, (name, settings) in enumerate(SETTINGS.items()):
            client, deltas, _ = stack.enter_context(serving.endpoint_client(
                pair, task, folders, work / f"api-{i}", port + i, settings))
            key = client.headers["Authorization"].removeprefix("Bearer ")
            servers[name] = (str(client.base_url), key, deltas)
            serving.progress(f"API up: {name}")
        passes: dict[str, list[dict]] = {name: [] for name in servers}
        for r in range(rounds + 1):  # the first pass warms up (loads the model and the adapters)
            for name, (url, key, deltas) in servers.items():
                result = one_pass(url, key, deltas, prompts, clients, requests, tokens)
                if r:
                    passes[name].append(result)
                serving.progress(f"{name}: {result['tokens_per_s']:.0f} tokens/s" + ("" if r else " (warm-up)"))
    for name, runs in passes.items():
        results[name] = {"tokens_per_s": serving.median([p["tokens_per_s"] for p in runs]),
                         "latency_s_median": serving.median([p["latency_s_median"] for p in runs]),
                         "passes": runs}
    alone = results["alone (max batch 1)"]["tokens_per_s"]
    results["ratios"] = {f"{name} vs alone": results[name]["tokens_per_s"] / alone for name in SETTINGS}
    results["load_average_1m"]["end"] = os.getloadavg()[0]
    return results


def report(r: dict) -> None:
    load = r["load_average_1m"]
    print(f"pair {r['pair']} on {r['device']}, task {r['task']}: {r['clients']} clients at once, "
          f"{r['requests_per_client']} requests each of {r['tokens_per_request']} tokens, each on its own "
          f"adapter; {r['rounds']} passes per setting taking turns; load average {load['start']:.1f} -> "
          f"{load['end']:.1f}")
    print(f"{'setting':28} {'tokens/s':>9} {'vs alone':>9} {'latency (median)':>17}")
    for name in r["settings"]:
        row = r[name]
        print(f"{name:28} {row['tokens_per_s']:9.0f} {r['ratios'][f'{name} vs alone']:8.2f}x "
              f"{row['latency_s_median']:16.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="holds pairs/ (built if missing)")
    parser.add_argument("--pair", default="toy", choices=["toy", "smol"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per pass")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer (the toy LLM has 64 positions)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8770)
    parser.add_argument("--out", type=Path, default=Path("bench/results/concurrency.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = run(args.data_dir, args.pair, args.clients, args.requests, args.tokens, args.rounds, args.port)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
