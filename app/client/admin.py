"""`gradlift admin ...`: the provider's commands (an admin key: `gradlift keys create --org NAME --admin`).

    gradlift admin pair add --id ID --tiny DIR --llm DIR [--r 2 --alpha 32 --targets q_proj,v_proj]
                                                       on the server's machine: into GRADLIFT_PAIRS_DIR
    gradlift admin task add --pair P --id ID --public FILE [--test FILE] [--metric exact|rouge1]
    gradlift admin task list [--pair P]
    gradlift admin shadow build --pair P --task T --runs N [--steps S ...] [--watch]   prints the build id
    gradlift admin gt train --pair P --task T [--task T2 ...] [--gt-id NAME] [--watch] prints the version
    gradlift admin gt list --pair P
    gradlift admin gt activate --pair P --gt NAME --version V

Results go to stdout with the id alone on the last line; progress bars to stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.client.http import Api, ClientError

TERMINAL = ("succeeded", "failed", "cancelled")


def add_commands(commands: argparse._SubParsersAction, service: argparse.ArgumentParser) -> None:
    admin = commands.add_parser("admin", help="the provider's commands: pairs, tasks, shadow builds, GTs")
    groups = admin.add_subparsers(dest="group", required=True, metavar="GROUP")
    pair = groups.add_parser("pair", help="model pairs").add_subparsers(dest="action", required=True)
    add = pair.add_parser("add", help="register two Hugging Face causal-LM folders as a pair (local)")
    add.add_argument("--id", required=True)
    add.add_argument("--tiny", type=Path, required=True, help="the TinyLM's folder")
    add.add_argument("--llm", type=Path, required=True, help="the LLM's folder (more parameters)")
    add.add_argument("--r", type=int, default=2)
    add.add_argument("--alpha", type=int, default=32)
    add.add_argument("--targets", default="q_proj,v_proj", help="comma-separated Linear module names")
    add.add_argument("--seed", type=int, default=0)
    task = groups.add_parser("task", help="tasks").add_subparsers(dest="action", required=True)
    tadd = task.add_parser("add", parents=[service], help="register a task from JSONL files")
    tadd.add_argument("--pair", required=True)
    tadd.add_argument("--id", required=True)
    tadd.add_argument("--public", type=Path, required=True, help="the shadow pool (JSONL)")
    tadd.add_argument("--test", type=Path, help="scores GTs (JSONL)")
    tadd.add_argument("--metric", choices=("exact", "rouge1"), default="exact")
    task.add_parser("list", parents=[service], help="every task").add_argument("--pair")
    _add_shadow(groups, service)
    _add_gt(groups, service)


def _add_shadow(groups: argparse._SubParsersAction, service: argparse.ArgumentParser) -> None:
    shadow = groups.add_parser("shadow", help="shadow builds").add_subparsers(dest="action", required=True)
    build = shadow.add_parser("build", parents=[service], help="build a task's shadow runs on the train queue")
    build.add_argument("--pair", required=True)
    build.add_argument("--task", required=True)
    build.add_argument("--runs", type=int, required=True)
    for name, kind in (("subset-size", int), ("keep-last", int), ("steps", int), ("batch-size", int),
                       ("lr", float), ("seed", int), ("chunk-size", int)):
        build.add_argument(f"--{name}", type=kind, help="default: the pair's recipe")
    build.add_argument("--watch", action="store_true", help="a progress bar until it ends; exit 1 unless it succeeds")
    build.add_argument("--timeout", type=float, help="with --watch: give up after this many seconds")
    shadow.add_parser("watch", parents=[service], help="follow a build").add_argument("build")
    shadow.add_parser("cancel", parents=[service], help="cancel a build").add_argument("build")


def _add_gt(groups: argparse._SubParsersAction, service: argparse.ArgumentParser) -> None:
    gt = groups.add_parser("gt", help="Gradient Transformers").add_subparsers(dest="action", required=True)
    train = gt.add_parser("train", parents=[service], help="train a GT version and its card")
    train.add_argument("--pair", required=True)
    train.add_argument("--task", action="append", required=True, help="repeat for a GT over several tasks")
    train.add_argument("--gt-id", help="its name (default: the task, or all)")
    train.add_argument("--steps", type=int, help="GT training steps (default: the pair's recipe)")
    train.add_argument("--d-model", type=int, help="the network's width")
    train.add_argument("--max-test", type=int, help="test examples the card scores per task")
    train.add_argument("--watch", action="store_true", help="follow it; prints the version; exit 1 unless it succeeds")
    train.add_argument("--timeout", type=float)
    gt.add_parser("list", parents=[service], help="GT versions of a pair").add_argument("--pair", required=True)
    act = gt.add_parser("activate", parents=[service], help="put a version in service")
    act.add_argument("--pair", required=True)
    act.add_argument("--gt", required=True, help="the GT's name, e.g. the task")
    act.add_argument("--version", required=True)


def add_pair_locally(args: argparse.Namespace) -> int:
    """`gradlift admin pair add`: into the service's pairs folder, on this machine."""
    from app.config import get_settings
    from models.errors import GradliftError
    from models.lora.spec import LoraSpec
    from models.pairs.folders import add_pair

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    try:
        pair = add_pair(get_settings().pairs_dir, args.id, args.tiny, args.llm,
                        LoraSpec(r=args.r, alpha=args.alpha, targets=targets), args.seed)
    except GradliftError as exc:
        raise ClientError(str(exc)) from None
    print(f"pair {pair.id} ready at {pair.root}; add tasks with `gradlift admin task add --pair {pair.id} ...`:")
    print(pair.id)
    return 0


def run(api: Api, args: argparse.Namespace) -> int:
    handlers: dict[tuple[str, str], Callable[[Api, argparse.Namespace], int]] = {
        ("task", "add"): _task_add, ("task", "list"): _task_list, ("shadow", "build"): _shadow_build,
        ("shadow", "watch"): _shadow_watch, ("shadow", "cancel"): _shadow_cancel, ("gt", "train"): _gt_train,
        ("gt", "list"): _gt_list, ("gt", "activate"): _gt_activate}
    return handlers[(args.group, args.action)](api, args)


def _task_add(api: Api, args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        files = {"public": ("public.jsonl", stack.enter_context(open(args.public, "rb")))}
        if args.test:
            files["test"] = ("test.jsonl", stack.enter_context(open(args.test, "rb")))
        task = api.post("/v1/admin/tasks", data={"pair": args.pair, "id": args.id, "metric": args.metric},
                        files=files)
    print(f"task on {task['pair']}: {task['n_public']} public, {task['n_test']} test examples, {task['metric']}:")
    print(task["id"])
    return 0


def _task_list(api: Api, args: argparse.Namespace) -> int:
    for task in api.get("/v1/admin/tasks", **({"pair": args.pair} if args.pair else {}))["data"]:
        print(f"{task['pair']:<12}{task['id']:<24}{task['source']:<12}{task['metric']:<8}"
              f"public {task['n_public']}, test {task['n_test']}")
    return 0


def _shadow_build(api: Api, args: argparse.Namespace) -> int:
    names = ("subset_size", "keep_last", "steps", "batch_size", "lr", "seed", "chunk_size")
    body = {"pair": args.pair, "task": args.task, "runs": args.runs,
            **{n: getattr(args, n) for n in names if getattr(args, n) is not None}}
    build = api.post("/v1/admin/shadow-builds", json=body)
    if args.watch:
        build = follow(api, f"/v1/admin/shadow-builds/{build['id']}", args.timeout,
                       lambda b: b["done"] / b["total"], "shadow runs")
    print(f"shadow build {build['status']}: {build['done']} of {build['total']} runs ({build['reused']} reused):")
    print(build["id"])
    return 0


def _shadow_watch(api: Api, args: argparse.Namespace) -> int:
    build = follow(api, f"/v1/admin/shadow-builds/{args.build}", None, lambda b: b["done"] / b["total"],
                   "shadow runs")
    print(f"shadow build {build['status']}: {build['done']} of {build['total']} runs")
    print(build["id"])
    return 0


def _shadow_cancel(api: Api, args: argparse.Namespace) -> int:
    build = api.post(f"/v1/admin/shadow-builds/{args.build}/cancel")
    print(f"shadow build {build['status']}:")
    print(build["id"])
    return 0


def _gt_train(api: Api, args: argparse.Namespace) -> int:
    body = {"pair": args.pair, "tasks": args.task, "gt_id": args.gt_id, "steps": args.steps,
            "d_model": args.d_model, "max_test": args.max_test}
    row = api.post("/v1/admin/gt-trainings", json={k: v for k, v in body.items() if v is not None})
    if not args.watch:
        print(f"GT training queued (follow it with GET /v1/admin/gt-trainings/{row['id']}):")
        print(row["id"])
        return 0
    row = follow(api, f"/v1/admin/gt-trainings/{row['id']}", args.timeout, lambda r: r["progress"], "GT training")
    print(json.dumps(row["card"]["summary"], indent=2, sort_keys=True))
    print(f"GT {row['gt_id']} version (activate it with `gradlift admin gt activate --pair {row['pair']} "
          f"--gt {row['gt_id']} --version VERSION`):")
    print(row["version"])
    return 0


def _gt_list(api: Api, args: argparse.Namespace) -> int:
    for row in api.get(f"/v1/admin/gts/{args.pair}")["data"]:
        summary = row["card_summary"] or {}
        card = ", ".join(f"{k} {v:.3g}" for k, v in summary.items() if isinstance(v, float))
        print(f"{row['gt_id']:<20}{row['version']:<14}{'active' if row['active'] else '':<8}{card}")
    return 0


def _gt_activate(api: Api, args: argparse.Namespace) -> int:
    row = api.post(f"/v1/admin/gts/{args.pair}/{args.gt}/activate", json={"version": args.version})
    print(f"GT {row['gt_id']} of {args.pair} now serves version:")
    print(row["version"])
    return 0


def follow(api: Api, path: str, timeout_s: float | None, fraction: Callable[[dict], float], what: str,
           interval_s: float = 1.0) -> dict[str, Any]:
    """Poll a build or training with a progress bar until it ends; ClientError unless it succeeded."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    row = api.get(path)
    with tqdm(total=100, unit="%", desc=what, bar_format="{desc:<28}{percentage:3.0f}%|{bar}| {elapsed}") as bar:
        while True:
            bar.set_description_str(f"{what}: {row.get('stage', row['status'])}"[:27])
            bar.update(max(0.0, 100 * fraction(row) - bar.n))
            if row["status"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"{path} is still {row['status']} after {timeout_s:.0f}s")
            time.sleep(interval_s)
            row = api.get(path)
    if row["status"] != "succeeded":
        error = row.get("error") or {}
        raise ClientError(f"{path.rsplit('/', 1)[-1]} {row['status']}: {error.get('message') or 'no reason given'}")
    return row
