"""The API's view of the model pairs in `models/`, imported lazily so the web process starts without torch."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import ApiError, Code

if TYPE_CHECKING:
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
