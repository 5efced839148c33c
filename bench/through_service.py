"""An organization's whole path through a running service, and the upgraded model's accuracy through
the chat endpoint beside the base model's:

    fine-tune the pair's TinyLM on a task's private half (the project's code, the pair's recipe)
    -> POST /v1/checkpoints -> POST /v1/upgrades (task not given: the pair's GT for all tasks)
    -> wait for the delta -> POST /v1/chat/completions on the task's test questions, delta and base

    gradlift serve &                                  # GRADLIFT_DEFAULT_PAIR=smol, the default
    python -m bench.through_service --url http://127.0.0.1:8000 --key "$KEY" --pair smol \\
        --task pick-2 pick-4 omit-1 initial-2 --out bench/results/through-service-smol.json

The key comes from `gradlift keys create`. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from models.data.tasks import get_task, make_splits
from models.pairs import Pair, PairStore
from models.recipes import recipe_for
from models.training.finetune import finetune_adapter

ANSWER_TOKENS = 16  # enough for every smol and toy answer


def upgrade(client: httpx.Client, pair: str, adapter: Path, task: str | None, timeout_s: float) -> str:
    """Upload the adapter, run an upgrade, return the delta id."""
    with open(adapter / "adapter_model.safetensors", "rb") as handle:
        checkpoint = client.post("/v1/checkpoints", data={"pair": pair},
                                 files={"file": ("adapter_model.safetensors", handle)})
    checkpoint.raise_for_status()
    body = {"pair": pair, "checkpoint_ids": [checkpoint.json()["id"]], "task": task}
    job = client.post("/v1/upgrades", json=body)
    job.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.get(f"/v1/upgrades/{job.json()['id']}").json()
        if state["status"] == "succeeded":
            return state["delta_id"]
        if state["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"upgrade {state['id']} {state['status']}: {state.get('error')}")
        time.sleep(1.0)
    raise TimeoutError(f"upgrade not done in {timeout_s:.0f}s")


def chat_answers(client: httpx.Client, model: str, prompts: list[str], max_tokens: int, clients: int) -> list[str]:
    """Greedy answers through /v1/chat/completions, `clients` requests in flight at once."""

    def ask(prompt: str) -> str:
        reply = client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "temperature": 0, "max_tokens": max_tokens})
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"].strip()

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(ask, prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--pair", default="smol")
    parser.add_argument("--task", nargs="+", default=["pick-2"], help="one or more of the pair's tasks")
    parser.add_argument("--pairs-dir", type=Path, default=Path("data/pairs"), help="where the pair is built")
    parser.add_argument("--n", type=int, default=200, help="test questions")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--upgrade-timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("through-service.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    pair = PairStore(args.pairs_dir).get(args.pair)
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=600)
    base_model = next(m["id"] for m in client.get("/v1/models").json()["data"]
                      if m["pair"] == pair.id and m["parent"] is None)
    results = [one_task(client, pair, task, base_model, args) for task in args.task]
    print(f"\n{args.pair}: test questions through /v1/chat/completions (task not given to the upgrade)")
    for r in results:
        print(f"  {r['task']:<10} upgraded {r['upgraded']['accuracy']:>6.1%}   base {r['base']['accuracy']:>6.1%}"
              f"   ({r['n_test']} questions; TinyLM fine-tune {r['timings_s']['tiny_finetune']:.0f}s,"
              f" upload + upgrade {r['timings_s']['upgrade']:.0f}s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pair": args.pair, "tasks": results}, indent=2, sort_keys=True))
    print(f"wrote {args.out}")


def one_task(client: httpx.Client, pair: Pair, task: str, base_model: str, args: argparse.Namespace) -> dict:
    """The organization's path for one task, then the delta's and the base model's accuracy."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = finetune_adapter(pair, task, Path(tmp) / "adapter", cfg=recipe_for(pair).tiny)
        finetune_s = time.perf_counter() - start
        start = time.perf_counter()
        delta = upgrade(client, pair.id, adapter, None, args.upgrade_timeout)
        upgrade_s = time.perf_counter() - start
    test = make_splits(get_task(task), seed=pair.spec.seed).test[: args.n]
    prompts = [ex.prompt for ex in test]
    rows = {}
    for name, model in (("upgraded", delta), ("base", base_model)):
        start = time.perf_counter()
        got = chat_answers(client, model, prompts, ANSWER_TOKENS, args.clients)
        right = sum(g == ex.answer for g, ex in zip(got, test, strict=True))
        rows[name] = {"model": model, "accuracy": right / len(test), "seconds": time.perf_counter() - start,
                      "sample": [{"prompt": ex.prompt, "expected": ex.answer, "answer": g}
                                 for ex, g in zip(test[:5], got[:5], strict=True)]}
    return {"task": task, "n_test": len(test), "delta": delta,
            "timings_s": {"tiny_finetune": finetune_s, "upgrade": upgrade_s}, **rows}


if __name__ == "__main__":
    main()
