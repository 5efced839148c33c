"""Serving speed of the chat endpoint on a pair (toy or smol), printed as ratios and written as JSON:

    tokens/s through the endpoint  vs  generate() on the merged model in process     (target >= 0.9x)
        on the toy's own answers (about 9 tokens each: per-request cost dominates), and on long answers
        (`min_tokens` = `max_tokens` = --long-tokens, the end token held back as transformers'
        `min_new_tokens` does, on both sides)
    per-request cost: max_tokens 1 through the endpoint vs in process, and a bare /healthz
    adapter switch latency (resident and cold), endpoint and in process              (target <= 50 ms)
    tensor memory with 20 resident adapters vs 1                                     (target < 1.10x)
    the engine's own LoRA application vs PEFT's multi-adapter model, in process

    python -m bench.serving --data-dir data --out bench/results/serving.json
    python -m bench.serving --pair smol --prompts 10 --rounds 6 --long-tokens 64 --out ...
    python -m bench.serving --pair smol --device cuda --random-llm twin-smol --out ...   (see bench.twin)

Builds the pair first if it is missing; runs the API (`gradlift api`, with GRADLIFT_DEVICE = --device) in a
subprocess; every side runs on --device. The machine is shared, so the sides of every speed comparison take
turns pass by pass (see `interleaved`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from app.config import Settings
from app.delta_import import import_delta
from models.device import resolve_device, synchronize

log = logging.getLogger("bench.serving")
BIN = Path(sys.executable).parent
PROBE = "rol ?: abcdefgh #### "
DEVICE = torch.device("cpu")  # every side's; set from --device
STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr as each stage ends, so a run cut short still tells what it measured."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"cpu ({os.cpu_count()} cores)"

Answer = Callable[[str], int]  # answers one prompt greedily; returns how many tokens it generated


def interleaved(answerers: dict[str, Answer], prompts: list[str], rounds: int) -> dict[str, dict]:
    """Tokens/s of each answerer over `rounds` passes through the prompts, after one warm-up pass each:
    the median of its passes (a burst of load from other processes spoils a pass or two, not the figure),
    and overall. The answerers take turns pass by pass, so load that comes and goes falls on all of them;
    within a pass each answers every prompt in a row, as a server answers requests back to back. (Turns
    at every prompt gave the endpoint 0.84-0.91x merged where whole passes gave 0.83-1.03x, on the same
    busy machine: probably the API process refilling its CPU caches after each of the bench's models ran.)"""
    for answer in answerers.values():
        for prompt in prompts:
            answer(prompt)
    passes: dict[str, list[tuple[int, float]]] = {name: [] for name in answerers}
    for _ in range(rounds):
        for name, answer in answerers.items():
            start = time.perf_counter()
            tokens = sum(answer(prompt) for prompt in prompts)
            passes[name].append((tokens, time.perf_counter() - start))
    results = {}
    for name, runs in passes.items():
        progress(f"{name}: {median([t / s for t, s in runs]):.0f} tokens/s (median of {len(runs)} passes)")
        tokens, seconds = sum(t for t, _ in runs), sum(s for _, s in runs)
        results[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s_overall": tokens / seconds,
                         "tokens_per_s": median([t / s for t, s in runs]),
                         "tokens_per_s_passes": [t / s for t, s in runs]}
    return results


def upgraded_adapters(pair, task: str, work: Path, count: int) -> list[Path]:
    """`count` adapter folders: an upgrade of a TinyLM fine-tuned on `task` through the real upgrade path
    (the pair's GT for all tasks), then `variants` of it."""
    from models.pairs import ALL_TASKS
    from models.training.finetune import finetune_adapter
    from models.upgrade import run_upgrade

    tiny = finetune_adapter(pair, task, work / "tiny", steps=60)
    upgraded = work / "upgraded"
    run_upgrade(pair, ALL_TASKS, [tiny / "adapter_model.safetensors"], upgraded)
    return [upgraded, *variants(upgraded, pair, work, count - 1)]


def variants(base_folder: Path, pair, out: Path, count: int) -> list[Path]:
    """`count` distinct adapters of the pair: the generated update scaled by 1, 1.01, ... (memory and
    switching only need distinct adapters of the right shapes)."""
    from models.lora.update import add, read_adapter, save_update
    from models.training.finetune import write_adapter_folder

    update = read_adapter(base_folder / "update.safetensors")
    folders = []
    for i in range(count):
        scaled = {k: v * (1 + i / 100) for k, v in update.items()}
        folder = write_adapter_folder(out / f"v{i}", pair.spec.lora, str(pair.llm_dir),
                                      add(pair.init("llm"), scaled), {"variant": i})
        save_update(scaled, folder / "update.safetensors")
        folders.append(folder)
    return folders


# ---- in process ----

def generate_answer(model, tokenizer, max_tokens: int, min_tokens: int = 0) -> Answer:
    """`generate()` on one prompt, with the chat template where the tokenizer has one, as the endpoint
    applies it (greedy; `min_new_tokens` as the endpoint's min_tokens)."""
    from models.data.textdata import prompt_ids, uses_chat

    device = model.device

    def answer(prompt: str) -> int:
        if uses_chat(tokenizer):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
        else:
            ids = prompt_ids(tokenizer, prompt)
        ids = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_tokens, min_new_tokens=min_tokens or None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        synchronize(device)
        return out.shape[1] - ids.shape[1]

    return answer


def merged_model(pair, folder: Path):
    """A plain model with the adapter merged into its weights."""
    from models.lora.update import merge_into, read_adapter

    merged = merge_into(pair.load_model("llm"), read_adapter(folder / "adapter_model.safetensors"),
                        pair.spec.lora.scale)
    return merged.to(DEVICE)


def engine_answer(engine, ref, max_tokens: int, min_tokens: int = 0) -> Answer:
    from models.serving.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, min_tokens=min_tokens, temperature=0)

    def answer(prompt: str) -> int:
        generation = engine.generate(engine.prompt_ids([{"role": "user", "content": prompt}]), params, ref)
        generation.text()
        return generation.completion_tokens

    return answer


def peft_model(pair, folders: list[Path]) -> tuple[object, float]:
    """PEFT's own multi-adapter model with every adapter loaded, and its median `set_adapter` seconds."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(pair.load_model("llm", DEVICE), str(folders[0]), adapter_name="a0").eval()
    for i, folder in enumerate(folders[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    switches = []
    for i in range(40):
        start = time.perf_counter()
        model.set_adapter(f"a{i % len(folders)}")
        switches.append(time.perf_counter() - start)
    model.set_adapter("a0")
    return model, median(switches)


def engine_memory_and_switch(pair, folders: list[Path]) -> dict:
    from models.serving.adapters import AdapterRef
    from models.serving.engine import ChatEngine
    from models.serving.sampling import SamplingParams

    engine = ChatEngine.from_pair(pair, max_adapters=len(folders), device=DEVICE)
    refs = [AdapterRef(f"v{i}", f / "adapter_model.safetensors") for i, f in enumerate(folders)]
    cold = []
    for ref in refs:
        start = time.perf_counter()
        engine.adapter(ref)
        cold.append(time.perf_counter() - start)
        if ref is refs[0]:
            one = engine.memory_bytes()
    twenty = engine.memory_bytes()
    prompt = engine.prompt_ids([{"role": "user", "content": PROBE}])
    params = SamplingParams(max_tokens=1, temperature=0)
    first_token = {}
    for label, order in (("same", [refs[0]] * 40), ("alternating", [refs[i % 2] for i in range(40)])):
        times = []
        for ref in order:
            start = time.perf_counter()
            engine.generate(prompt, params, ref).text()
            times.append(time.perf_counter() - start)
        first_token[label] = median(times)
    return {"bytes_1": one["total"], "bytes_20": twenty["total"], "base_bytes": one["base"],
            "cold_load_ms": 1000 * median(cold),
            "resident_switch_ms": 1000 * (first_token["alternating"] - first_token["same"])}


# ---- through the endpoint ----

def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def endpoint_answer(client: httpx.Client, model: str, max_tokens: int, min_tokens: int = 0) -> Answer:
    def answer(prompt: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": max_tokens}
        if min_tokens:
            body["min_tokens"] = min_tokens
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return response.json()["usage"]["completion_tokens"]

    return answer


def request_cost(client: httpx.Client, model: str, engine, ref, passes: int = 10, per_pass: int = 20) -> dict:
    """Median milliseconds of one request for one token through the endpoint and in process, and of a
    bare /healthz; each answers `per_pass` in a row, taking turns pass by pass (as `interleaved`)."""
    from models.serving.sampling import SamplingParams

    body = {"model": model, "messages": [{"role": "user", "content": PROBE}], "temperature": 0, "max_tokens": 1}
    params, prompt = SamplingParams(max_tokens=1, temperature=0), [{"role": "user", "content": PROBE}]
    calls = {"endpoint_ms": lambda: client.post("/v1/chat/completions", json=body).raise_for_status(),
             "in_process_ms": lambda: engine.generate(engine.prompt_ids(prompt), params, ref).text(),
             "healthz_ms": lambda: client.get("/healthz").raise_for_status()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(passes + 1):  # the first pass warms up
        for name, call in calls.items():
            for _ in range(per_pass):
                start = time.perf_counter()
                call()
                if i:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * median(values) for name, values in times.items()}


def first_token_s(client: httpx.Client, model: str) -> float:
    """Seconds from sending a streamed request to its first content chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": PROBE}],
            "temperature": 0, "max_tokens": 4, "stream": True}
    start, elapsed = time.perf_counter(), None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():  # read to the end, so the connection is reused
            if elapsed is None and line.startswith("data: {") and any(
                    c["delta"].get("content") for c in json.loads(line[6:])["choices"]):
                elapsed = time.perf_counter() - start
    if elapsed is not None:
        return elapsed
    raise RuntimeError(f"no content in the stream of {model}")


def endpoint_switch(client: httpx.Client, deltas: list[str]) -> dict:
    cold = [first_token_s(client, d) for d in deltas[2:]]  # first touch of each: read from disk
    same = [first_token_s(client, deltas[0]) for _ in range(30)]
    alternating = [first_token_s(client, deltas[i % 2]) for i in range(30)]
    return {"first_token_ms_same": 1000 * median(same), "first_token_ms_alternating": 1000 * median(alternating),
            "first_token_ms_cold": 1000 * median(cold),
            "resident_switch_ms": 1000 * (median(alternating) - median(same)),
            "cold_switch_ms": 1000 * (median(cold) - median(same))}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def start_api(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    subprocess.run([str(BIN / "gradlift"), "migrate"], env=env, check=True, capture_output=True, timeout=120)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([str(BIN / "gradlift"), "api", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.25)
    proc.kill()
    raise TimeoutError(f"the API did not start; see {log_path}")


def ready_pair(data_dir: Path, pair_id: str, random_llm: Path | None):
    """The pair, built if missing: the toy with its quick GT, smol converted, or smol's stand-in."""
    from models.gt.quick import ensure_toy_ready
    from models.pairs import ensure_pair

    if random_llm is not None:
        if pair_id != "smol":
            raise SystemExit("--random-llm stands in for the smol pair's LLM only")
        from bench.twin import ensure_twin

        return ensure_twin((data_dir / "stand-in-pairs").resolve(), random_llm)
    pairs_dir = (data_dir / "pairs").resolve()
    return ensure_toy_ready(pairs_dir) if pair_id == "toy" else ensure_pair(pairs_dir, pair_id)


def run(data_dir: Path, pair_id: str, random_llm: Path | None, prompts_n: int, max_tokens: int, long_tokens: int,
        rounds: int, port: int) -> dict:
    from models.data.tasks import get_task, make_splits

    pair = ready_pair(data_dir, pair_id, random_llm)
    task = pair.spec.tasks[0]
    prompts = [ex.prompt for ex in make_splits(get_task(task), seed=pair.spec.seed).test[:prompts_n]]
    with tempfile.TemporaryDirectory(prefix="gradlift-serving-") as tmp:
        return _run(pair, task, prompts, Path(tmp), (max_tokens, long_tokens), rounds, port)


def _run(pair, task: str, prompts: list[str], work: Path, lengths: tuple[int, int], rounds: int,
         port: int) -> dict:
    from models.serving.adapters import AdapterRef
    from models.serving.engine import ChatEngine

    folders = upgraded_adapters(pair, task, work, 20)
    upgraded = folders[0]
    results: dict = {"pair": pair.id, "task": task, "prompts": len(prompts), "max_tokens": lengths[0],
                     "device": device_name(), "stand_in_llm": (pair.llm_dir / "STAND-IN.txt").is_file(),
                     "long": {"max_tokens": lengths[1], "min_tokens": lengths[1]},
                     "torch_threads": torch.get_num_threads(), "rounds": rounds,
                     "load_average_1m": {"start": os.getloadavg()[0]}}
    progress("upgraded; 20 adapters written")
    results["engine_memory_switch"] = engine_memory_and_switch(pair, folders)
    progress("in-process memory and switch measured")
    merged, (peft, peft_switch_s) = merged_model(pair, upgraded), peft_model(pair, folders)
    tokenizer = pair.load_tokenizer("llm")
    engine = ChatEngine.from_pair(pair, device=DEVICE)
    ref = AdapterRef("u", upgraded / "adapter_model.safetensors")

    def answerers(client: httpx.Client, model: str, max_tokens: int, min_tokens: int) -> dict[str, Answer]:
        chosen = {"merged_generate": generate_answer(merged, tokenizer, max_tokens, min_tokens),
                  "engine_in_process": engine_answer(engine, ref, max_tokens, min_tokens),
                  "endpoint": endpoint_answer(client, model, max_tokens, min_tokens)}
        if not min_tokens:  # PEFT's speed only matters beside the engine's, measured once
            chosen["peft_multi_adapter"] = generate_answer(peft, tokenizer, max_tokens)
        return chosen

    with endpoint_client(pair, task, folders, work, port) as (client, deltas, proc):
        first_token_s(client, deltas[0])  # loads the base model
        rss_1 = rss_bytes(proc.pid)
        results.update(interleaved(answerers(client, deltas[0], lengths[0], 0), prompts, rounds))
        results["peft_multi_adapter"]["switch_ms"] = 1000 * peft_switch_s
        results["long"].update(interleaved(answerers(client, deltas[0], lengths[1], lengths[1]), prompts, rounds))
        results["request_cost"] = request_cost(client, deltas[0], engine, ref)
        progress(f"request cost {results['request_cost']}")
        results["endpoint_switch"] = endpoint_switch(client, deltas)
        results["endpoint_rss"] = {"bytes_1": rss_1, "bytes_20": rss_bytes(proc.pid)}
    results["load_average_1m"]["end"] = os.getloadavg()[0]  # the machine is shared: how busy it was
    return results


@contextmanager
def endpoint_client(pair, task: str, folders: list[Path], work: Path, port: int,
                    settings: dict[str, str] | None = None
                    ) -> Iterator[tuple[httpx.Client, list[str], subprocess.Popen[bytes]]]:
    """`gradlift api` in a subprocess with the adapters stored as deltas of an organization: (a client
    with its key, the delta ids, the API process). `settings`: more GRADLIFT_* variables for the API."""
    pairs_dir = pair.root.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLIFT_")}
    env.update(GRADLIFT_DATA_DIR=str(work / "data"), GRADLIFT_PAIRS_DIR=str(pairs_dir), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", GRADLIFT_DEVICE=str(DEVICE), **(settings or {}))
    proc = start_api(env, port, work / "api.log")
    try:
        key = subprocess.run([str(BIN / "gradlift"), "keys", "create", "--org", "bench"], env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout.strip().splitlines()[-1]
        settings = Settings(data_dir=work / "data", pairs_dir=pairs_dir)
        deltas = [import_delta(settings, "bench", f, pair.id, task, gt_version="bench") for f in folders]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, deltas, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ratios(r: dict) -> dict:
    mem, merged = r["engine_memory_switch"], r["merged_generate"]["tokens_per_s"]
    return {
        "endpoint_vs_merged_generate_tokens_per_s": r["endpoint"]["tokens_per_s"] / merged,
        "engine_vs_merged_generate_tokens_per_s": r["engine_in_process"]["tokens_per_s"] / merged,
        "engine_vs_peft_multi_adapter_tokens_per_s":
            r["engine_in_process"]["tokens_per_s"] / r["peft_multi_adapter"]["tokens_per_s"],
        "long_endpoint_vs_merged_generate_tokens_per_s":
            r["long"]["endpoint"]["tokens_per_s"] / r["long"]["merged_generate"]["tokens_per_s"],
        "long_engine_vs_merged_generate_tokens_per_s":
            r["long"]["engine_in_process"]["tokens_per_s"] / r["long"]["merged_generate"]["tokens_per_s"],
        "tensor_memory_20_vs_1_adapters": mem["bytes_20"] / mem["bytes_1"],
        "process_rss_20_vs_1_adapters": r["endpoint_rss"]["bytes_20"] / r["endpoint_rss"]["bytes_1"],
    }


def report(r: dict) -> None:
    q, e, s, c = r["ratios"], r["endpoint_switch"], r["engine_memory_switch"], r["request_cost"]
    long = r["long"]
    per_answer = r["endpoint"]["tokens"] / (r["prompts"] * r["rounds"])
    load = r["load_average_1m"]
    stand_in = " (stand-in LLM: random weights)" if r["stand_in_llm"] else ""
    print(f"pair {r['pair']}{stand_in} on {r['device']}, task {r['task']}: {r['prompts']} prompts, greedy, "
          f"torch threads {r['torch_threads']}, "
          f"{r['rounds']} passes taking turns (medians of passes); load average {load['start']:.1f} -> "
          f"{load['end']:.1f} on {os.cpu_count()} cores")
    print(f"tokens/s, the task's answers (max_tokens {r['max_tokens']}; {per_answer:.1f} tokens each):")
    print(f"          merged generate() {r['merged_generate']['tokens_per_s']:8.0f}")
    print(f"          engine in process {r['engine_in_process']['tokens_per_s']:8.0f}  "
          f"({q['engine_vs_merged_generate_tokens_per_s']:.2f}x merged)")
    print(f"          PEFT multi-adapter{r['peft_multi_adapter']['tokens_per_s']:9.0f}  "
          f"(engine is {q['engine_vs_peft_multi_adapter_tokens_per_s']:.2f}x PEFT)")
    print(f"          endpoint          {r['endpoint']['tokens_per_s']:8.0f}  "
          f"({q['endpoint_vs_merged_generate_tokens_per_s']:.2f}x merged; target >= 0.90x)")
    print(f"tokens/s, long answers (min_tokens = max_tokens = {long['max_tokens']}, end token held back on "
          "both sides):")
    print(f"          merged generate() {long['merged_generate']['tokens_per_s']:8.0f}")
    print(f"          engine in process {long['engine_in_process']['tokens_per_s']:8.0f}  "
          f"({q['long_engine_vs_merged_generate_tokens_per_s']:.2f}x merged)")
    print(f"          endpoint          {long['endpoint']['tokens_per_s']:8.0f}  "
          f"({q['long_endpoint_vs_merged_generate_tokens_per_s']:.2f}x merged; target >= 0.90x)")
    print(f"request   max_tokens 1: endpoint {c['endpoint_ms']:.2f} ms, in process {c['in_process_ms']:.2f} ms; "
          f"bare /healthz {c['healthz_ms']:.2f} ms (medians)")
    print(f"switch    endpoint resident {e['resident_switch_ms']:6.1f} ms, cold (read from disk) "
          f"{e['cold_switch_ms']:6.1f} ms  (target <= 50 ms)")
    print(f"          in process resident {s['resident_switch_ms']:6.2f} ms, cold {s['cold_load_ms']:6.2f} ms; "
          f"PEFT set_adapter {r['peft_multi_adapter']['switch_ms']:.2f} ms")
    print(f"memory    tensors 20 vs 1 adapters {q['tensor_memory_20_vs_1_adapters']:.3f}x "
          f"({s['bytes_1'] / 2**20:.2f} -> {s['bytes_20'] / 2**20:.2f} MiB; target < 1.10x); "
          f"API process RSS {q['process_rss_20_vs_1_adapters']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="holds pairs/ (built if missing)")
    parser.add_argument("--pair", default="toy", choices=["toy", "smol"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N, for every side")
    parser.add_argument("--random-llm", type=Path, help="smol only: a folder of SmolLM2's files without its "
                        "weights (python -m bench.twin); the LLM gets seeded random weights (speed only)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--long-tokens", type=int, default=40,
                        help="tokens per long answer (the toy LLM has 64 positions; its prompts take 21)")
    parser.add_argument("--rounds", type=int, default=10, help="passes through the prompts per side")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # as the API runs (GRADLIFT_CHAT_TORCH_THREADS=1)
    global DEVICE
    DEVICE = resolve_device(args.device)
    results = run(args.data_dir, args.pair, args.random_llm, args.prompts, args.max_tokens, args.long_tokens,
                  args.rounds, args.port)
    results["ratios"] = ratios(results)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
