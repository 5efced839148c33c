"""The organization's subcommands of `gradlift`: their arguments and what each runs.

    gradlift finetune --pair P --data FILE.jsonl --out DIR [--dp-epsilon E] [--update-noise KIND ...]
    gradlift upload DIR [--pair P] [--prompts FILE]       prints the checkpoint id
    gradlift upgrade CHECKPOINT... [--pair P] [--task T] [--mode auto|gt|distill] [--watch]
                                                          prints the upgrade id (delta id with --watch)
    gradlift watch UPGRADE                                 a progress bar until the upgrade ends
    gradlift download DELTA --out DIR                      the LLM adapter (resumed if interrupted)
    gradlift chat MODEL                                    a streamed conversation, one turn per line
    gradlift whoami / gradlift collab ACTION ...           pooled upgrades (see app/client/collab.py)

The service and key come from --url / --api-key, else GRADLIFT_URL / GRADLIFT_API_KEY. Results go to
stdout, the id alone on the last line; progress and errors to stderr; a failure exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from app.client import admin, collab
from app.client.http import Api, ClientError, client_settings

if TYPE_CHECKING:
    from models.lora.privacy import DPConfig, UpdateNoise

COMMANDS = ("finetune", "upload", "upgrade", "watch", "download", "chat", "whoami", "collab", "admin")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the client's subcommands on `gradlift`'s parser."""
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("--url", help="the service (default: GRADLIFT_URL, else http://127.0.0.1:8000)")
    service.add_argument("--api-key", help="the organization's key (default: GRADLIFT_API_KEY)")
    _add_finetune(commands, service)
    up = commands.add_parser("upload", parents=[service], help="upload a TinyLM adapter; prints its checkpoint id")
    up.add_argument("adapter", type=Path, help="an adapter folder, or its adapter_model.safetensors")
    up.add_argument("--pair", help="the pair it was trained for (default: from the folder's gradlift.json)")
    up.add_argument("--prompts", type=Path, help="JSONL of unlabelled prompts in your task's format "
                    '({"prompt": ...} lines): upgrades probe and distill with them. The provider sees them.')
    upgrade = commands.add_parser("upgrade", parents=[service], help="lift checkpoints to the pair's LLM")
    upgrade.add_argument("checkpoints", nargs="+", help="checkpoint ids (several are averaged)")
    upgrade.add_argument("--pair", help="default: the first checkpoint's pair")
    upgrade.add_argument("--task", help="the task's GT (default: the pair's GT for all tasks)")
    upgrade.add_argument("--mode", choices=("auto", "gt", "distill"), default="auto",
                         help="gt: the Gradient Transformer; distill: fine-tune the LLM on your TinyLM's answers "
                         "(slower, works for any task); auto (default): the GT when its quality check passes")
    upgrade.add_argument("--watch", action="store_true", help="follow it; exit 1 if it fails")
    upgrade.add_argument("--timeout", type=float, help="with --watch: give up after this many seconds")
    follow = commands.add_parser("watch", parents=[service], help="follow an upgrade until it ends")
    follow.add_argument("upgrade", help="the upgrade id")
    follow.add_argument("--timeout", type=float, help="give up after this many seconds")
    down = commands.add_parser("download", parents=[service], help="download a generated LLM adapter")
    down.add_argument("delta", help="the delta id")
    down.add_argument("--out", type=Path, required=True, help="the folder to write (a PEFT adapter folder)")
    talk = commands.add_parser(
        "chat", parents=[service], help="chat with a model, streamed; one turn per line",
        description="Chat with a model, streamed. On a terminal: one conversation, a turn per line (/reset "
        "forgets it, /exit ends it). With input piped in: each line is a question of its own, answered alone.")
    talk.add_argument("model", help="a delta id (dlt_..., from `gradlift upgrade` or GET /v1/models), or a pair's "
                      "base model: smol-llm on the default server (toy-llm where the toy pair is served)")
    talk.add_argument("--system", help="a system message opening the conversation")
    talk.add_argument("--max-tokens", type=int)
    talk.add_argument("--temperature", type=float)
    collab.add_commands(commands, service)
    admin.add_commands(commands, service)


def _add_finetune(commands: argparse._SubParsersAction, service: argparse.ArgumentParser) -> None:
    tune = commands.add_parser("finetune", parents=[service], help="LoRA fine-tune the TinyLM on your own data")
    tune.add_argument("--pair", required=True, help="a pair id on the service, or a local pair folder")
    tune.add_argument("--data", type=Path, required=True,
                      help='JSONL: {"messages": [...]} or {"prompt": ..., "answer": ...} per line')
    tune.add_argument("--out", type=Path, required=True, help="the adapter folder to write")
    recipe = "default: the pair's recipe, the one its Gradient Transformers were trained for"
    tune.add_argument("--steps", type=int, help=recipe)
    tune.add_argument("--batch-size", type=int, help=f"with DP-SGD: the expected batch size; {recipe}")
    tune.add_argument("--lr", type=float, help=recipe)
    tune.add_argument("--seed", type=int, default=0)
    dp = tune.add_argument_group("DP-SGD (Opacus): per-example clipping and noise for a total (epsilon, delta)")
    dp.add_argument("--dp-epsilon", type=float, help="train with DP-SGD spending at most this epsilon")
    dp.add_argument("--dp-delta", type=float, help="default 1e-5")
    dp.add_argument("--dp-clip", type=float, help="per-example gradient L2 bound (default 1.0)")
    noise = tune.add_argument_group("output perturbation: clip the update, add noise before it is written")
    noise.add_argument("--update-noise", choices=("gaussian", "laplace"))
    noise.add_argument("--noise-epsilon", type=float)
    noise.add_argument("--noise-delta", type=float, help="gaussian only; default 1e-5")
    noise.add_argument("--clip", type=float, help="the update's norm bound (L2 gaussian, L1 laplace)")
    cache = "where the pair's TinyLM is cached (default: GRADLIFT_CACHE_DIR, else ~/.cache/gradlift)"
    tune.add_argument("--cache-dir", type=Path, help=cache)
    tune.set_defaults(usage=tune)  # flag errors show this command's usage


def run(args: argparse.Namespace) -> int:
    """Run one client command; the exit status."""
    try:
        if args.command == "finetune":
            return _finetune(args, args.usage)
        if args.command == "admin" and args.group == "pair":  # on the server's machine, no HTTP
            return admin.add_pair_locally(args)
        with Api(args.url, args.api_key) as api:
            return _HANDLERS[args.command](api, args)
    except ClientError as exc:
        print(f"gradlift: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the service carries on: an upgrade keeps running, a download resumes
        print("\ngradlift: interrupted", file=sys.stderr)
        return 130


def _finetune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from app.client.finetune import FinetuneRequest, run_finetune
    from models.errors import GradliftError

    try:
        dp, noise = _privacy(args, parser)
        request = FinetuneRequest(args.pair, args.data, args.out, args.steps, args.batch_size, args.lr, args.seed,
                                  dp, noise)
        cache = args.cache_dir or client_settings().cache_dir
        meta = run_finetune(request, lambda: Api(args.url, args.api_key), cache)
    except (GradliftError, ValueError) as exc:
        print(f"gradlift: error: {exc}", file=sys.stderr)
        return 1
    dp_run = (meta.get("privacy") or {}).get("dp_sgd")
    if dp_run:
        print(f"DP-SGD: epsilon spent {dp_run['epsilon_spent']:.4g} at delta {dp_run['delta']:g} "
              f"(noise multiplier {dp_run['noise_multiplier']:.3g}, sample rate {dp_run['sample_rate']:.3g})")
    print(f"adapter for pair {meta['pair']} from {meta['examples']} examples, {meta['steps']} steps:")
    print(args.out)
    return 0


def _privacy(args: argparse.Namespace,
             parser: argparse.ArgumentParser) -> tuple[DPConfig | None, UpdateNoise | None]:
    """DPConfig and UpdateNoise from the flags, or None; settings that do not fit are a usage error."""
    from models.errors import ConfigError
    from models.lora.privacy import DPConfig, UpdateNoise

    if args.dp_epsilon is None and (args.dp_delta is not None or args.dp_clip is not None):
        parser.error("--dp-delta and --dp-clip need --dp-epsilon")
    if args.update_noise is None and any(v is not None for v in (args.noise_epsilon, args.noise_delta, args.clip)):
        parser.error("--noise-epsilon, --noise-delta and --clip need --update-noise")
    if args.update_noise is not None and (args.noise_epsilon is None or args.clip is None):
        parser.error("--update-noise needs --noise-epsilon and --clip")
    given = lambda **values: {k: v for k, v in values.items() if v is not None}
    try:
        dp = DPConfig(args.dp_epsilon, **given(delta=args.dp_delta, clip=args.dp_clip)) \
            if args.dp_epsilon is not None else None
        noise = UpdateNoise(args.update_noise, args.noise_epsilon, args.clip, **given(delta=args.noise_delta)) \
            if args.update_noise is not None else None
    except ConfigError as exc:
        parser.error(str(exc))
    return dp, noise


def _upload(api: Api, args: argparse.Namespace) -> int:
    from app.client.jobs import upload

    checkpoint = upload(api, args.adapter, args.pair, args.prompts)
    print(f"checkpoint for pair {checkpoint['pair']}, sha256 {checkpoint['sha256']}:")
    print(checkpoint["id"])
    return 0


def _upgrade(api: Api, args: argparse.Namespace) -> int:
    from app.client.jobs import create_upgrade, follow

    job = create_upgrade(api, args.checkpoints, args.pair, args.task, args.mode)
    if not args.watch:
        print(f"upgrade queued (follow it with `gradlift watch {job['id']}`):")
        print(job["id"])
        return 0
    print(f"upgrade {job['id']} queued", file=sys.stderr)
    return follow(api, job["id"], args.timeout)


def _watch(api: Api, args: argparse.Namespace) -> int:
    from app.client.jobs import follow

    return follow(api, args.upgrade, args.timeout)


def _download(api: Api, args: argparse.Namespace) -> int:
    from app.client.jobs import download_delta

    print(download_delta(api, args.delta, args.out))
    return 0


def _chat(api: Api, args: argparse.Namespace) -> int:
    from app.client.chat import chat, user_lines

    failed = chat(api, args.model, user_lines(sys.stdin), sys.stdout, args.system, keep_history=sys.stdin.isatty(),
                  max_tokens=args.max_tokens, temperature=args.temperature)
    return 1 if failed else 0


_HANDLERS = {"upload": _upload, "upgrade": _upgrade, "watch": _watch, "download": _download, "chat": _chat,
             "whoami": collab.whoami, "collab": collab.collab, "admin": admin.run}
