"""The `gradlift` command line.

    gradlift serve [--host H] [--port P] [--train-workers N]  migrate, then the API and one worker (embedded
                                           defaults), and N training workers
    gradlift api [--host H] [--port P]     the API alone (scaled out: run `gradlift migrate` first)
    gradlift worker [--train] [celery options]  one upgrade worker (--train: one training worker, the
                                           provider's shadow-run chunks and GT trainings)
    gradlift migrate                       bring the database to the newest schema
    gradlift keys create --org NAME [--admin]  a new API key (its organization made if missing; --admin: the
                                           provider's, for /v1/admin and `gradlift admin ...`)
    gradlift keys list [--org NAME]        every key: id, organization, first characters, made, revoked
    gradlift keys revoke KEY_ID            revoke a key (refused within GRADLIFT_AUTH_CACHE_S seconds)
    gradlift keys rotate KEY_ID            a new key for the same organization; the old one is revoked
    gradlift pair build NAME               build a model pair: smol (SmolLM2, shipped GTs) or toy (+ a quick GT)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("gradlift")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradlift", description="Lift TinyLM LoRA updates to an LLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "migrate, make the default pair ready, then run the API and one worker"),
                       ("api", "run the API alone (scaled out: run `gradlift migrate` first)")):
        sub = commands.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. The console is at /, "
                                  "the API's documents at /docs and /redoc, Prometheus metrics at /metrics. "
                                  "Ctrl-C (or SIGTERM) stops it. Settings: GRADLIFT_* variables (README).")
        sub.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
        sub.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    commands.choices["serve"].add_argument("--train-workers", type=int, default=0,
                                           help="training workers to start too (the provider's shadow builds and "
                                           "GT trainings; default 0)")
    commands.add_parser("worker", help="run one upgrade worker, or with --train one training worker (extra "
                        "options go to celery worker)")
    commands.add_parser("migrate", help="apply database migrations")
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="make a key; prints it alone on the last line")
    create.add_argument("--org", required=True, help="organization name (made if missing)")
    create.add_argument("--admin", action="store_true", help="a provider's key: also reaches /v1/admin/...")
    keys.add_parser("list", help="list keys (never the keys themselves)").add_argument(
        "--org", help="only this organization's")
    keys.add_parser("revoke", help="revoke a key by its id (key_...)").add_argument("key_id")
    keys.add_parser("rotate", help="a new key for the key's organization, printed last; the old one is "
                    "revoked").add_argument("key_id")
    pair = commands.add_parser("pair", help="model pairs").add_subparsers(dest="action", required=True)
    build = pair.add_parser("build", help="build a pair into GRADLIFT_PAIRS_DIR")
    build.add_argument("name", help="the pair's id, e.g. toy")
    from app.client.cli import add_commands

    add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from app.client.cli import COMMANDS

    if args.command in COMMANDS:  # the organization's side: the service's settings are not its business
        from app.client.cli import run

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        sys.exit(run(args))
    from app.config import get_settings

    logging.basicConfig(level=get_settings().log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("keys", "migrate"):  # their output is for a person (or a script's `tail -n 1`)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "worker":
        os.execv(sys.executable, [sys.executable, "-m", "workers", *extra])
    handlers = {"serve": lambda: serve(args.host, args.port, args.train_workers),
                "api": lambda: run_api(args.host, args.port),
                "migrate": migrate, "keys": lambda: keys(args),
                "pair": lambda: build_pair(args.name)}
    handlers[args.command]()


def migrate() -> None:
    from app.db.migrate import upgrade_head

    upgrade_head()
    print("database is at the newest schema")


def keys(args: argparse.Namespace) -> None:
    """`gradlift keys create|list|revoke|rotate`; exits 1 for a key id that does not exist."""
    from app.config import get_settings
    from app.db import queries
    from app.db.migrate import upgrade_head
    from app.db.session import session_scope

    upgrade_head()
    later = f"it stops working within GRADLIFT_AUTH_CACHE_S ({get_settings().auth_cache_s:g} s)"
    with session_scope() as session:
        if args.action == "list":
            for row, name in queries.list_keys(session, args.org):
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                admin = "  admin" if row.admin else ""
                print(f"{row.id}  {name}  {row.prefix}...  made {row.created_at:%Y-%m-%d %H:%M}  {state}{admin}")
            return
        if args.action == "create":
            org, key = queries.create_key(session, args.org, args.admin)
            print(f"organization {org.name} ({org.id}){'; an admin key' if args.admin else ''}")
        elif args.action == "revoke":
            if queries.revoke_key(session, args.key_id) is None:
                sys.exit(f"no API key with id {args.key_id!r} (see `gradlift keys list`)")
            print(f"revoked {args.key_id}; {later}")
            return
        else:
            rotated = queries.rotate_key(session, args.key_id)
            if rotated is None:
                sys.exit(f"no API key with id {args.key_id!r} (see `gradlift keys list`)")
            key = rotated[1]
            print(f"revoked {args.key_id}; {later}")
    print("new API key (shown once; send it as `Authorization: Bearer <key>`):")
    print(key)


def build_pair(name: str) -> None:
    """Build a pair; the toy pair also gets a quickly trained GT for all its tasks."""
    from app.config import get_settings

    root = get_settings().pairs_dir
    if name == "toy":
        from models.gt.quick import ensure_toy_ready

        pair = ensure_toy_ready(root)
    else:
        from models.pairs import ensure_pair

        pair = ensure_pair(root, name)
    print(f"pair {pair.id} ready at {pair.root}; GTs: {', '.join(pair.gt_ids()) or 'none'}")


def run_api(host: str, port: int) -> None:
    import uvicorn

    from app.config import get_settings

    # Keep-alive well above clients' reuse windows (httpx: 5 s): a connection the server closes as a client
    # reuses it loses that request.
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, timeout_keep_alive=30,
                log_level=get_settings().log_level.lower())


def serve(host: str, port: int, train_workers: int = 0) -> None:
    """Everything on one machine: migrations, the default pair, one worker process (and `train_workers`
    training workers), the API."""
    from app.config import get_settings
    from app.db.migrate import upgrade_head

    settings = get_settings()
    upgrade_head()
    _ensure_default_pair(settings.default_pair)
    workers = [subprocess.Popen([sys.executable, "-m", "workers"])]
    workers += [subprocess.Popen([sys.executable, "-m", "workers", "--train"]) for _ in range(train_workers)]
    print(f"gradlift: console on http://{host}:{port}/ (API docs at /docs, metrics at /metrics), "
          f"data in {settings.data_dir}; Ctrl-C stops it", flush=True)
    print("make an API key with:  gradlift keys create --org NAME", flush=True)
    # uvicorn re-raises the signal it stopped for once it is done; as SystemExit it runs `finally`,
    # which stops the workers (gracefully: each finishes the job in hand) instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_api(host, port)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _ensure_default_pair(name: str) -> None:
    from app.config import get_settings
    from app.pairs import PairCatalog

    catalog = PairCatalog(get_settings().pairs_dir)
    if name in catalog.ids() and catalog.get(name).gt_ids():
        return
    first = {"toy": "building the toy pair and its GT (several minutes on a CPU)",
             "smol": "setting up the smol pair: SmolLM2-135M-Instruct converted from its GGUF file (~30 s)"}
    print(f"{first.get(name, f'building pair {name!r}')} (first start only)", flush=True)
    build_pair(name)


if __name__ == "__main__":
    main()
