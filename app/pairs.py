"""The API's view of the model pairs in `models/`, imported lazily so the web process starts without torch."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import ApiError, Code

if TYPE_CHECKING:
    from app.schemas.pairs import TaskGT
    from models.pairs import Pair


class PairCatalog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ids(self) -> list[str]:
        from models.pairs import PairStore

        return PairStore(self.root).ids()

    def get(self, pair_id: str, *, param: str | None = "pair") -> Pair:
        from models.errors import NotFoundError
        from models.pairs import PairStore

        try:
            return PairStore(self.root).get(pair_id)
        except NotFoundError as exc:
            raise ApiError(Code.pair_not_found, f"No pair {pair_id!r}: {exc}.", param=param) from None

    @staticmethod
    def choose_gt(pair: Pair, task: str | None, privacies: list[dict[str, Any] | None] | None = None) -> str:
        """The GT for a task (its own, else the pair's all-task GT) and the uploads' privacy settings (the
        most private of them), as the ML core resolves it."""
        from models.errors import NotFoundError
        from models.lora.privacy import noisiest
        from models.upgrade import resolve_gt

        try:
            return resolve_gt(pair, task, noisiest(privacies or []))
        except NotFoundError as exc:
            raise ApiError(Code.no_gradient_transformer, f"{exc}.", param="task") from None

    @staticmethod
    def tiny_adapter_shapes(pair: Pair) -> dict[str, tuple[int, ...]]:
        path = pair.tiny_init_path
        return _shapes(str(path), path.stat().st_mtime_ns)


def task_gt(pair: Pair, task: str) -> TaskGT | None:
    """The GT a plain upgrade on `task` uses, as `models.upgrade.resolve_gt` picks it for an upload without
    privacy settings (the task's GTs, else the pair-wide ones for its procedural tasks; of those the plain
    one), read from config.json alone: listing pairs loads no model."""
    from app.schemas.pairs import TaskGT
    from models.pairs import ALL_TASKS

    by_task: dict[str, list[str]] = {}
    for gt_id in pair.gt_ids():
        by_task.setdefault(gt_id.split("@", 1)[0], []).append(gt_id)
    name = task if task in by_task else ALL_TASKS if ALL_TASKS in by_task and task in pair.spec.tasks else None
    if name is None:
        return None
    gt_id = min(by_task[name], key=lambda i: (len(i), i))
    config = json.loads((pair.gt_dir(gt_id) / "config.json").read_text())
    summary = (config.get("card") or {}).get("summary")
    return TaskGT(id=gt_id, version=config["weights_sha256"][:12], card_summary=summary)


@lru_cache(maxsize=16)
def _shapes(path: str, _mtime_ns: int) -> dict[str, tuple[int, ...]]:
    # Read from the header only: the init file is trusted, and the shapes are all that is needed.
    from models.lora.header import read_header

    return {name: tuple(info["shape"]) for name, info in read_header(Path(path)).items()}


def file_sha256(path: Path) -> str:
    """sha256 of a pair's file (read-only data), computed once per file version."""
    stat = path.stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _sha256(path: str, _mtime_ns: int, _size: int) -> str:
    from app.storage import sha256_file

    return sha256_file(Path(path))
