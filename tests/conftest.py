"""Fixtures shared by the service's tests: settings pointed at a temporary data folder, the toy pair
(built once per session), and fresh PostgreSQL databases / Redis db numbers for the scaled-out runs."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings, get_settings

PG_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def toy_pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pairs folder holding the toy pair and a quickly trained GT "all", built once per session, or
    copied from GRADLIFT_TEST_PAIRS/toy where that names one built the same way (`ensure_toy_ready`, as
    `bench.serving` leaves it in data/pairs): for machines where building costs scarce time."""
    from models.gt.quick import ensure_toy_ready

    root = tmp_path_factory.mktemp("pairs")
    prebuilt = os.environ.get("GRADLIFT_TEST_PAIRS")
    if prebuilt:
        shutil.copytree(Path(prebuilt) / "toy", root / "toy", ignore=shutil.ignore_patterns("*.lock"))
    ensure_toy_ready(root, profile="test")
    return root


@pytest.fixture
def toy_copy_dir(toy_pairs_dir: Path, tmp_path: Path) -> Path:
    """A pairs folder with this test's own copy of the toy pair (models, inits, GT "all"; no shadow runs,
    no registered tasks): for tests that add tasks, shadow runs or GT versions."""
    root = tmp_path / "own-pairs"
    shutil.copytree(toy_pairs_dir / "toy", root / "toy",
                    ignore=shutil.ignore_patterns("shadow", "bench", "tasks", "gt_versions", "*.lock"))
    return root


DP_GT = "all@dp-sgd-eps1"  # the dp_pairs_dir fixture's second all-task GT


@pytest.fixture(scope="session")
def dp_pairs_dir(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the toy pair with a second all-task GT, trained on DP-SGD (epsilon 1) shadow runs of the
    quick GT's plans (their LLM runs are the plain plans', already built)."""
    from dataclasses import replace

    from models.gt.checkpoint import data_hash, save_gt
    from models.gt.network import GTArch
    from models.gt.quick import quick_plans
    from models.gt.train import GTTrainConfig, train_gt
    from models.lora.privacy import DPConfig
    from models.pairs import PairStore
    from models.training.shadow import build_shadow, load_shadow, shadow_privacy

    root = tmp_path_factory.mktemp("dp-pairs")
    shutil.copytree(toy_pairs_dir / "toy", root / "toy")
    pair = PairStore(root).get("toy")
    plans = [replace(plan, dp=DPConfig(1.0)) for plan in quick_plans(pair)]
    build_shadow(pair, plans, progress=False)
    data = load_shadow(pair, plans)
    model, info = train_gt(data, GTTrainConfig(steps=50, eval_every=50, arch=GTArch(d_model=64, d_ff=128)),
                           progress=False)
    save_gt(model, pair.gt_dir(DP_GT), {"pair": pair.id, "task": "all", "tasks": list(pair.spec.tasks),
                                        "data_sha256": data_hash(data.src, data.tgt),
                                        "shadow_privacy": shadow_privacy(plans), **info}, data)
    return root


@pytest.fixture(scope="session")
def smol_pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pairs folder holding the smol pair: shipped assets + SmolLM2 converted from its GGUF (~30 s)."""
    from models.pairs import ensure_pair

    root = tmp_path_factory.mktemp("smol-pairs")
    ensure_pair(root, "smol")
    return root


@pytest.fixture(scope="session")
def toy_adapter(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TinyLM LoRA adapter folder fine-tuned on a toy task, as an organization would make it."""
    from models.pairs import PairStore
    from models.training.finetune import finetune_adapter

    pair = PairStore(toy_pairs_dir).get("toy")
    return finetune_adapter(pair, pair.spec.tasks[0], tmp_path_factory.mktemp("adapter"), steps=60)


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """GRADLIFT_* variables for a fresh data folder (embedded defaults), in this process's settings."""
    monkeypatch.setenv("GRADLIFT_DATA_DIR", str(tmp_path / "data"))
    for name in ("DATABASE_URL", "BROKER_URL", "PAIRS_DIR", "MAX_UPLOAD_BYTES", "JOB_LEASE_S"):
        monkeypatch.delenv(f"GRADLIFT_{name}", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def use_settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> Settings:
    """Set GRADLIFT_<NAME> variables and return the settings they make."""
    for name, value in values.items():
        monkeypatch.setenv(f"GRADLIFT_{name.upper()}", value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"gradlift_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    from app.db import session as db_session

    db_session.dispose_all()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_broker() -> Iterator[tuple[str, str]]:
    """(broker URL, queue name): Redis db 15 and a queue no other test run shares; its keys go afterwards."""
    import redis

    url, queue = f"{REDIS_URL}/15", f"test-{os.getpid()}-{secrets.token_hex(4)}"
    yield url, queue
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"*{queue}*"):
        client.delete(key)
    client.close()


KNOWN_TASKS, UNSEEN_TASK = ("rotate-6", "drop-5"), "rotate-3"  # honest_pairs_dir's GT knows the first two


@pytest.fixture(scope="session")
def honest_pairs_dir(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the toy pair with a routed GT for two tasks, trained on 3 shadow runs each made with the
    pair's recipe (the fine-tune an organization runs), so its quality checks mean what they say."""
    from models.gt.checkpoint import data_hash, save_gt
    from models.gt.network import GTArch
    from models.gt.train import GTTrainConfig, train_gt
    from models.pairs import ALL_TASKS, PairStore
    from models.recipes import RECIPES
    from models.training.shadow import ShadowPlan, build_shadow, load_shadow

    root = tmp_path_factory.mktemp("honest-pairs")
    shutil.copytree(toy_pairs_dir / "toy", root / "toy", ignore=shutil.ignore_patterns("gts", "shadow", "*.lock"))
    pair = PairStore(root).get("toy")
    recipe = RECIPES["toy"]
    plans = [ShadowPlan(task, subsets=3, subset_size=1000, keep_last=10, finetune=recipe.tiny)
             for task in KNOWN_TASKS]
    build_shadow(pair, plans, workers=2, progress=False)
    data = load_shadow(pair, plans)
    model, info = train_gt(data, GTTrainConfig(steps=300, eval_every=100, arch=GTArch(d_model=64, d_ff=128),
                                               route=True), progress=False)
    save_gt(model, pair.gt_dir(ALL_TASKS), {"pair": pair.id, "task": ALL_TASKS, "tasks": list(KNOWN_TASKS),
                                            "data_sha256": data_hash(data.src, data.tgt), **info}, data)
    return root


@pytest.fixture(scope="session")
def recipe_adapters(honest_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """TinyLM adapters fine-tuned with the pair's recipe on the private halves of a task honest_pairs_dir's
    GT knows and of one it does not."""
    from models.pairs import PairStore
    from models.recipes import tiny_recipe
    from models.training.finetune import finetune_adapter

    pair = PairStore(honest_pairs_dir).get("toy")
    out = tmp_path_factory.mktemp("recipe-adapters")
    return {task: finetune_adapter(pair, task, out / task, cfg=tiny_recipe("toy"))
            for task in (KNOWN_TASKS[0], UNSEEN_TASK)}
