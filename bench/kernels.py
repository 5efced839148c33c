"""Whether this machine computes the same bits as the machines recorded in bench/results/kernels.json.

    python -m bench.kernels                 # prints this machine's digests beside the recorded ones
    python -m bench.kernels --record        # and adds them to the file (commit it)

Two computations, under each choice of `GRADLIFT_CPU_KERNELS` (models/kernels.py: `avx2`, the default;
`portable`, MKL's COMPATIBLE branch; `native`, each library's own), each in a fresh process on one thread: the
smol pair's LoRA init (seeded random numbers) and a 4-step LoRA fine-tune of its LLM from that init on 32
public examples of pick6-1 (the steps every shadow run, private run and distillation is made of). A digest is
a SHA-256 of the tensors' bytes. Pinned digests that match across machines mean a rerun there builds the same
shadow runs, GTs and benchmark rows; native ones match only between machines whose CPUs offer the same
instructions. Recorded so far: `avx2` gives other bits on an AMD EPYC than on an Intel Xeon (MKL honours its
AVX2 branch on Intel CPUs only), and so does `portable`. Each choice also records the bits of each kind of
operation a step is made of (`ops`), to say which one parts two machines. `seconds`: the fine-tune's 4 steps,
after a warm-up step (the choices run one after the other, so compare them on one machine only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from models.kernels import AVX2, CHOICES, SETTING, cpu_description

RESULTS = Path("bench/results/kernels.json")


def digest(tensors: dict) -> str:
    from models.gt.checkpoint import data_hash

    return data_hash(*(tensors[name] for name in sorted(tensors)))[:16]


def measure(data_dir: Path) -> dict:
    """This process's digests (run under the environment its parent chose)."""
    import torch  # the kernels are pinned (or not) already: importing models.kernels above did it

    from models.pairs import ensure_pair
    from models.pairs.tasks import task_splits
    from models.training.distill import learn
    from models.training.finetune import FinetuneConfig

    torch.set_num_threads(1)
    pair = ensure_pair(data_dir / "pairs", "smol")
    examples = task_splits(pair, "pick6-1").public[:32]
    learn(pair, examples[:8], FinetuneConfig(steps=1, batch_size=8, lr=2e-3, seed=0))  # warm: loads, first step
    started = time.perf_counter()
    update = learn(pair, examples, FinetuneConfig(steps=4, batch_size=8, lr=2e-3, seed=0))
    seconds = round(time.perf_counter() - started, 2)
    return {"capability": torch.backends.cpu.get_cpu_capability(), "llm_init": digest(pair.init("llm")),
            "tiny_init": digest(pair.init("tiny")), "finetune_4_steps": digest(update), "seconds": seconds,
            "ops": op_digests(pair, examples[:8])}


def op_digests(pair, examples: list) -> dict[str, str]:
    """Where a fine-tune's bits part between machines: each kind of operation a step is made of, alone on
    seeded inputs of the LLM's sizes, then the LLM's own forward pass (logits), its backward (gradients of the
    base weights) and one AdamW step. Not part of the machine's verdict; for finding the operation that
    differs when a pinned choice does."""
    import torch
    import torch.nn.functional as F

    from models.data.textdata import encode_batch

    model = pair.load_model("llm")
    width, heads = model.config.hidden_size, model.config.num_attention_heads
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, width, generator=g), torch.randn(width, width, generator=g) / width ** 0.5
    q, k, v = (torch.randn(2, heads, 32, width // heads, generator=g, requires_grad=True) for _ in range(3))
    logits = torch.randn(64, model.config.vocab_size, generator=g)
    targets = torch.randint(0, model.config.vocab_size, (64,), generator=g)
    attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attention.square().sum().backward()
    ops = {"matmul": x @ w.T, "matmul_batched": torch.bmm(x.view(8, 8, width), w.expand(8, width, width)),
           "sum": x.sum(1), "exp": x.exp(), "silu": F.silu(x), "softmax": x.softmax(-1),
           "rms_norm": x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5),
           "cross_entropy": F.cross_entropy(logits, targets, reduction="none"),
           "attention": attention.detach(), "attention_backward": q.grad}
    found = {name: digest({"out": out}) for name, out in ops.items()}
    batch = encode_batch(pair.load_tokenizer("llm"), examples)
    out = model(**batch)
    found["llm_logits"] = digest({"out": out.logits.detach()})
    out.loss.backward()
    found["llm_grads"] = digest({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.optim.AdamW(model.parameters(), lr=2e-3).step()
    found["llm_adamw_step"] = digest(dict(model.named_parameters()))
    return found


def _bits(measured: dict) -> tuple:
    return tuple(v for k, v in sorted(measured.items()) if k not in ("capability", "seconds", "ops"))


def machine() -> dict:
    from models.gt.checkpoint import versions

    cpu = cpu_description()
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "avx512": " avx512f" in cpu, **versions()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--record", action="store_true", help=f"add this machine's digests to {RESULTS}")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child processes
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.data_dir)))
        return
    here = {"machine": machine()}
    for kernels in CHOICES:
        env = {name: value for name, value in os.environ.items() if name not in AVX2}
        env |= {SETTING: kernels, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-m", "bench.kernels", "--measure", "--data-dir", str(args.data_dir)],
                             env=env, check=True, capture_output=True, text=True).stdout
        here[kernels] = json.loads(out.strip().splitlines()[-1])
    recorded = json.loads(RESULTS.read_text())["machines"] if RESULTS.exists() else []
    print(f"{'machine':<44}{'torch':<14}{'kernels':<10}{'capability':<11}{'llm_init':<18}{'finetune_4_steps':<18}"
          f"{'seconds':>8}")
    for entry in [*recorded, here]:
        for kernels in [k for k in CHOICES if k in entry]:  # machines recorded before `portable` lack it
            got = entry[kernels]
            label = ("this machine: " if entry is here else "") + entry["machine"]["cpu"]
            print(f"{label[:43]:<44}{entry['machine']['torch']:<14}{kernels:<10}{got['capability']:<11}"
                  f"{got['llm_init']:<18}{got['finetune_4_steps']:<18}{got.get('seconds', float('nan')):>8.1f}")
    print()
    for kernels in ("avx2", "portable"):
        others = [e for e in recorded if kernels in e]
        same = [e for e in others if _bits(e[kernels]) == _bits(here[kernels])]
        print(f"{kernels} kernels: the same bits as {len(same)} of {len(others)} recorded machines")
        for entry in [e for e in recorded if "ops" in e.get(kernels, {})]:
            ops = entry[kernels]["ops"]
            parted = [op for op in ops if ops[op] != here[kernels]["ops"].get(op)]
            print(f"{kernels} operations that differ from {entry['machine']['cpu']}'s: {', '.join(parted) or 'none'}")
    for kernels in ("portable", "native"):
        parted = [op for op, bits in here[kernels]["ops"].items() if bits != here["avx2"]["ops"][op]]
        print(f"operations here whose bits {kernels} kernels change from avx2's: {', '.join(parted) or 'none'}")
    print(f"native kernels here {'compute' if _bits(here['native']) == _bits(here['avx2']) else 'differ from'} "
          "the avx2 ones' bits")
    if args.record:
        RESULTS.write_text(json.dumps({"machines": [*recorded, here]}, indent=2, sort_keys=True) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
