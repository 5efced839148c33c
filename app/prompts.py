"""Unlabelled prompts an organization attaches to an upgrade (its question format, never its answers):
checked line by line, stored as one canonical JSONL blob, read back by the worker for probes and
distillation. The provider sees these prompts; that is the price of probing in the organization's format.
No torch here (models.data.datafile is plain Python)."""

from __future__ import annotations

import json
from pathlib import Path

from app.errors import ApiError, Code
from app.storage import BlobStore

MAX_PROMPTS = 5000
MAX_PROMPT_CHARS = 8000
MAX_PROMPTS_BYTES = 8 * 2**20


def parse_upload(path: Path, param: str) -> list:
    """The prompts of an uploaded JSONL file; 422 listing the malformed lines by number."""
    from models.data.datafile import parse_prompts
    from models.errors import DataFileError

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(Code.invalid_prompts, f"The prompts file is not UTF-8 text ({exc.reason}).",
                       param=param) from None
    try:
        prompts = parse_prompts(text, "the prompts file")
    except DataFileError as exc:
        raise ApiError(Code.invalid_prompts, str(exc), param=param) from None
    return _checked(prompts, param)


def parse_inline(items: list[str], param: str) -> list:
    """Prompts given in a request body (plain strings)."""
    return _checked(list(items), param)


def _checked(prompts: list, param: str) -> list:
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(Code.invalid_prompts, f"{len(prompts)} prompts; at most {MAX_PROMPTS} are used.",
                       param=param)
    for number, prompt in enumerate(prompts, start=1):
        text = prompt if isinstance(prompt, str) else prompt.prompt
        if not text.strip():
            raise ApiError(Code.invalid_prompts, f"Prompt {number} is empty.", param=param)
        if len(text) > MAX_PROMPT_CHARS:
            raise ApiError(Code.invalid_prompts, f"Prompt {number} has {len(text)} characters; at most "
                           f"{MAX_PROMPT_CHARS}.", param=param)
    return prompts


def encode(prompts: list) -> bytes:
    """The prompts as one canonical JSONL file (what the worker reads back)."""
    from models.data.datafile import prompt_record

    return "".join(json.dumps(prompt_record(p), ensure_ascii=False) + "\n" for p in prompts).encode("utf-8")


def store(blobs: BlobStore, prompts: list) -> tuple[str, int]:
    """Store the prompts as one canonical JSONL blob; returns (sha256, count). The caller holds the blob's
    lock (app.db.queries.lock_blob) until the row that points at it is committed."""
    sha256, _ = blobs.put_bytes(encode(prompts))
    return sha256, len(prompts)


def load(blobs: BlobStore, sha256: str) -> list:
    """A stored prompts blob, parsed (the worker's side)."""
    from models.data.datafile import read_prompts

    return read_prompts(blobs.path(sha256))
