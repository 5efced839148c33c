"""Downloads that survive interruptions: bytes land in `<name>.part`, a rerun asks for the rest with HTTP
Range (and If-Range on the sha256 ETag, so a changed file comes back whole), and only a file whose
sha256 matches is renamed into place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from app.client.http import Api, ClientError
from app.storage import sha256_file

CHUNK = 1 << 16
OnChunk = Callable[[int], None]  # called with the bytes written so far; raising stops the transfer


def fetch(api: Api, path: str, dest: Path, sha256: str, *, progress: bool = True,
          on_chunk: OnChunk | None = None) -> int:
    """Download `path` to `dest` unless it is there already; returns the bytes transferred."""
    if dest.is_file() and sha256_file(dest) == sha256:
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    transferred = 0
    for _ in range(2):  # a resumed file that fails its check is fetched once more from the start
        resumed = part.is_file() and part.stat().st_size > 0
        transferred += _transfer(api, path, part, sha256, progress, on_chunk)
        if sha256_file(part) == sha256:
            os.replace(part, dest)
            return transferred
        part.unlink()
        if not resumed:
            break
    raise ClientError(f"{path}: the downloaded bytes do not match sha256 {sha256}; nothing was kept")


def _transfer(api: Api, path: str, part: Path, sha256: str, progress: bool, on_chunk: OnChunk | None) -> int:
    """Append the missing bytes to `part` (or rewrite it when the server sends the whole file)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-", "If-Range": f'"{sha256}"'} if offset else {}
    with api.stream("GET", path, headers=headers, ok=(416,)) as response:
        if response.status_code == 416:  # the part is as long as the file, or longer: start over
            part.unlink()
            return _transfer(api, path, part, sha256, progress, on_chunk)
        if response.status_code == 206:
            if not response.headers.get("content-range", "").startswith(f"bytes {offset}-"):
                raise ClientError(f"{path}: the server sent a range other than the one asked for")
            mode, start = "ab", offset
        else:
            mode, start = "wb", 0
        total = start + int(response.headers.get("content-length", 0)) or None
        written = 0
        with open(part, mode) as handle, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                              desc=part.name.removesuffix(".part"), disable=not progress,
                                              leave=False) as bar:
            for chunk in response.iter_bytes(CHUNK):
                handle.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(start + written)
    return written
