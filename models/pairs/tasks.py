"""A pair's tasks, whatever made them: the one place that turns a task id on a pair into its splits
(public: the provider's shadow pool; private: an organization's stand-in data; test: scoring) and its
metric.

Two kinds answer through the same functions:
- procedural tasks (`models.data.tasks`: a family and a hidden key, splits drawn under the pair's seed),
  listed in pair.json; their metric is exact match;
- tasks registered from data files (`register_task`), kept in the pair's folder:

    tasks/<id>/task.json      {"id", "metric", "n_public", "n_test", "public_sha256", "test_sha256"}
    tasks/<id>/public.jsonl   the provider's shadow pool, one {"prompt", "answer"} or {"messages"} per line
    tasks/<id>/test.jsonl     scores GTs (optional)

A registered task has no private split: organizations bring their own data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from models.data.datafile import TrainingExample, read_examples
from models.data.tasks import Splits, get_task, make_splits
from models.errors import ConfigError, DataFileError, NotFoundError
from models.pairs.store import ALL_TASKS, Pair

METRICS = ("exact", "rouge1")
# Lower-case words, digits, dot, dash and underscore: a folder name, and never "@" (GT variants use it).
TASK_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class TaskExistsError(ConfigError):
    """A task id the pair already has (procedural or registered)."""


@dataclass(frozen=True)
class TaskInfo:
    id: str
    pair: str
    metric: str
    n_public: int
    n_test: int
    source: str  # "procedural" or "files"

    def to_dict(self) -> dict:
        return asdict(self)


def _folder(pair: Pair, task_id: str) -> Path | None:
    folder = pair.root / "tasks" / task_id
    return folder if TASK_ID.match(task_id) and (folder / "task.json").is_file() else None


def registered_ids(pair: Pair) -> list[str]:
    """The tasks registered from data files, by id."""
    root = pair.root / "tasks"
    return sorted(p.name for p in root.iterdir() if _folder(pair, p.name)) if root.is_dir() else []


def task_ids(pair: Pair) -> list[str]:
    """Every task of the pair: the procedural ones of pair.json, then the registered ones."""
    return list(dict.fromkeys([*pair.spec.tasks, *registered_ids(pair)]))


def task_splits(pair: Pair, task_id: str) -> Splits:
    """The task's disjoint public, private and test examples on this pair."""
    folder = _folder(pair, task_id)
    if folder is None:
        return make_splits(get_task(task_id), seed=pair.spec.seed)
    test = folder / "test.jsonl"
    return Splits(_read(folder / "public.jsonl"), [], _read(test) if test.is_file() else [])


def task_info(pair: Pair, task_id: str) -> TaskInfo:
    """What the pair knows of a task: its metric and split sizes."""
    folder = _folder(pair, task_id)
    if folder is not None:
        meta = json.loads((folder / "task.json").read_text())
        return TaskInfo(task_id, pair.id, meta["metric"], meta["n_public"], meta["n_test"], "files")
    try:
        splits = make_splits(get_task(task_id), seed=pair.spec.seed)
    except NotFoundError:
        known = ", ".join(task_ids(pair)) or "none"
        raise NotFoundError(f"pair {pair.id!r} has no task {task_id!r}; its tasks: {known}") from None
    return TaskInfo(task_id, pair.id, "exact", len(splits.public), len(splits.test), "procedural")


def task_metric(pair: Pair, task_id: str) -> str:
    """How the task's answers are scored: "exact" (exact match) or "rouge1" (ROUGE-1 F1, free text)."""
    return task_info(pair, task_id).metric


def check_new_task_id(pair: Pair, task_id: str) -> None:
    """Refuse an id that is malformed or already names a task of the pair (ConfigError / TaskExistsError)."""
    if not TASK_ID.match(task_id) or task_id == ALL_TASKS:
        raise ConfigError(f"task id {task_id!r}: use 1-64 lower-case letters, digits, '.', '-' or '_' "
                          f"(and not {ALL_TASKS!r})")
    try:
        get_task(task_id)
    except NotFoundError:
        pass
    else:
        raise TaskExistsError(f"{task_id!r} names a built-in procedural task; choose another id")
    if task_id in task_ids(pair):
        raise TaskExistsError(f"pair {pair.id!r} already has a task {task_id!r}")


def register_task(pair: Pair, task_id: str, public: Path, test: Path | None = None,
                  metric: str = "exact") -> TaskInfo:
    """Register a task on the pair from JSONL files (read whole first: one malformed line stores nothing;
    DataFileError lists every malformed line of both files by number)."""
    check_new_task_id(pair, task_id)
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    problems, counts = [], {}
    for name, path in (("public", public), ("test", test)):
        if path is None:
            continue
        try:
            counts[name] = len(read_examples(Path(path)))
        except DataFileError as exc:
            problems.append((name, exc))
    if problems:
        text = "\n".join(f"{name} file: {str(exc).split(': ', 1)[-1]}" for name, exc in problems)
        raise DataFileError(text, [p for _, exc in problems for p in exc.problems])
    return _store(pair, task_id, public, test, metric, counts)


def _store(pair: Pair, task_id: str, public: Path, test: Path | None, metric: str,
           counts: dict[str, int]) -> TaskInfo:
    """Copy the files into a staging folder, then rename it into place (a reader never sees half a task)."""
    root = pair.root / "tasks"
    staging = root / f".{task_id}.{secrets.token_hex(4)}.tmp"
    staging.mkdir(parents=True)
    try:
        meta = {"id": task_id, "metric": metric, "n_public": counts["public"], "n_test": counts.get("test", 0)}
        for name, path in (("public", public), ("test", test)):
            if path is not None:
                shutil.copyfile(path, staging / f"{name}.jsonl")
                meta[f"{name}_sha256"] = hashlib.sha256((staging / f"{name}.jsonl").read_bytes()).hexdigest()
        (staging / "task.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(staging, root / task_id)  # fails when the id was taken meanwhile
        except OSError:
            raise TaskExistsError(f"pair {pair.id!r} already has a task {task_id!r}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return task_info(pair, task_id)


def _read(path: Path) -> list[TrainingExample]:
    stat = path.stat()
    return list(_read_cached(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=32)
def _read_cached(path: str, _mtime_ns: int, _size: int) -> tuple[TrainingExample, ...]:
    return tuple(read_examples(Path(path)))
