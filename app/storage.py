"""A content-addressed blob store on a local folder: a blob's name is the sha256 of its bytes.

Writes go to a temporary file under `tmp/` and are renamed into `blobs/ab/abcd…` only when complete,
so a reader never sees half a file and a crash leaves at most a stray temporary file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20


class BlobTooLarge(Exception):
    """A write went past the writer's limit."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobWriter:
    """A blob being written: hashed and counted on the fly, limited, committed or aborted."""

    def __init__(self, store: BlobStore, limit: int) -> None:
        self.store, self.limit = store, limit
        self.path = store.tmp_dir / f"upload-{uuid.uuid4().hex}.part"
        self.size = 0
        self.head = b""  # the first bytes, to tell a safetensors file from a pickle without reading it back
        self._digest = hashlib.sha256()
        self._handle = open(self.path, "xb")  # noqa: SIM115 - closed by commit or abort

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise BlobTooLarge(f"more than {self.limit} bytes")
        if len(self.head) < 16:
            self.head = (self.head + data)[:16]
        self._handle.write(data)
        self._digest.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        """Flush to disk; the temporary file stays readable at `path` until commit or abort."""
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()

    def commit(self) -> str:
        """Move the bytes into the store under their sha256 (once, whoever wrote them first)."""
        self.close()
        target = self.store.path(self.sha256)
        if target.exists():
            self.path.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, target)
        return self.sha256

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, blobs_dir: Path, tmp_dir: Path) -> None:
        self.blobs_dir, self.tmp_dir = Path(blobs_dir), Path(tmp_dir)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def writer(self, limit: int) -> BlobWriter:
        return BlobWriter(self, limit)

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy a finished file into the store; returns (sha256, bytes)."""
        writer = self.writer(limit=source.stat().st_size)
        try:
            with open(source, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    writer.write(chunk)
            size = writer.size
            return writer.commit(), size
        except BaseException:
            writer.abort()
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store bytes made in memory; returns (sha256, bytes)."""
        writer = self.writer(limit=len(data))
        try:
            writer.write(data)
            return writer.commit(), len(data)
        except BaseException:
            writer.abort()
            raise

    @contextmanager
    def removing(self, sha256: str) -> Iterator[None]:
        """Remove a blob with the transaction that drops its last reference: it is moved aside now, deleted
        when the block ends, and put back if the block raises (the commit failed: the reference stays)."""
        aside = self.tmp_dir / f"removing-{sha256}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.path(sha256), aside)
        except FileNotFoundError:
            aside = None
        try:
            yield
        except BaseException:
            if aside is not None:
                os.replace(aside, self.path(sha256))
            raise
        if aside is not None:
            aside.unlink(missing_ok=True)

    def set_aside(self, older_than_s: float) -> list[tuple[str, Path]]:
        """Blobs `removing` moved aside that are still there after `older_than_s`: the process died between
        the move and its commit. (sha256, where the bytes are)."""
        now = time.time()
        return [(p.name.split("-")[1], p) for p in sorted(self.tmp_dir.glob("removing-*"))
                if now - p.stat().st_mtime > older_than_s]

    def restore(self, sha256: str, aside: Path) -> None:
        """Put a blob set aside back (its delete never committed)."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(aside, target)

    def work_dir(self, name: str) -> Path:
        """A fresh scratch folder for a job's outputs, removed by `discard`."""
        path = self.tmp_dir / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def work_dirs(self, name: str = "") -> list[Path]:
        """The scratch folders made by `work_dir(name)` (every one when no name is given) that are still
        there: a process that died while using one left it behind."""
        return sorted(p for p in self.tmp_dir.iterdir() if p.is_dir() and p.name.startswith(name)
                      and len(p.name) > len(name) and p.name[-9] == "-")

    @staticmethod
    def discard(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
