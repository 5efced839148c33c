"""Continuous batching for the chat engine: the running requests of one engine decode together, one
forward per step, each row with its own adapter (`RowAdapters`: the low-rank term is added per group of
rows that share an adapter, beside the shared base weights).

A request joins between steps. Its prompt is prefilled alone, in a KV cache of its own; that cache is then
joined to the batch's, both left-padded to the longer. The attention mask hides the padding, and each
row's position ids go on from its own length (keys were rotated at their true positions when they were
computed), so a row decodes as it would alone, up to float rounding. A row leaves at its end token, at its
token budget, when it is cancelled, or when its reader closes its token source (a stop string was found;
the client went away); columns that only padding fills are then trimmed.

One thread (this module's) runs every forward of the engine, so with batching on, torch's intra-op
threads are the way to use more cores (GRADLIFT_CHAT_TORCH_THREADS).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from models.serving.adapters import RowAdapters, active
from models.serving.sampling import TokenSource, next_token, request_generator

if TYPE_CHECKING:
    from models.serving.engine import ChatEngine, Generation

log = logging.getLogger(__name__)

_DONE = object()  # the end of a row's tokens


class _Row:
    """One request in the batch: what the decoding loop keeps of it."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.tokens: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.closed = False  # its reader stopped reading
        self.generated = 0
        self.length = 0  # tokens in its KV cache (without padding)
        self.last = 0  # the sampled token the next step feeds
        self.generator = request_generator(generation.params)
        self.counts: dict[int, int] = {}  # token -> times sampled, for the penalties

    @property
    def gone(self) -> bool:
        return self.closed or self.generation.cancelled


class Batcher:
    """Decodes an engine's requests in batches of at most `max_batch` rows, in a thread of its own."""

    def __init__(self, engine: ChatEngine, max_batch: int) -> None:
        self.engine, self.max_batch = engine, max_batch
        self.steps = 0  # batched forwards so far
        self.rows_stepped = 0  # rows those forwards decoded: rows_stepped / steps is the mean batch size
        self._cond = threading.Condition()
        self._pending: list[_Row] = []
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length]: 1 where a row has a key, 0 padding
        threading.Thread(target=self._loop, name=f"chat-batcher-{engine.model_id}", daemon=True).start()

    def submit(self, generation: Generation) -> TokenSource:
        """Queue the request; its sampled tokens, as the batch decodes them."""
        row = _Row(generation)
        with self._cond:
            self._pending.append(row)
            self._cond.notify()
        return self._read(row)

    @staticmethod
    def _read(row: _Row) -> Iterator[int]:
        try:
            while (item := row.tokens.get()) is not _DONE and not row.generation.cancelled:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            row.closed = True  # the loop drops it before its next step

    # the decoding thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._rows:
                    self._cond.wait()
                for row in self._pending:  # cancelled while waiting for room: end them now, not when admitted
                    if row.gone:
                        row.tokens.put(_DONE)
                self._pending = [row for row in self._pending if not row.gone]
                room = self.max_batch - len(self._rows)
                joining, self._pending = self._pending[:room], self._pending[room:]
            try:
                for row in joining:
                    self._admit(row)
                self._drop([i for i, row in enumerate(self._rows) if row.gone])
                if self._rows:
                    self._step()
            except Exception as exc:  # every request in flight gets the error; the loop goes on
                log.exception("chat batch of %s failed", self.engine.model_id)
                for row in {*self._rows, *joining}:
                    row.tokens.put(exc)
                self._rows, self._cache, self._mask = [], None, None

    def _admit(self, row: _Row) -> None:
        """Prefill the request alone, emit its first token, and join its cache to the batch's."""
        engine, generation = self.engine, row.generation
        if row.gone:
            row.tokens.put(_DONE)
            return
        cache = DynamicCache(config=engine.model.config)
        ids = torch.tensor([generation.prompt_ids], device=engine.device)
        logits = engine.forward(ids, cache, generation.factors)
        row.length = len(generation.prompt_ids)
        if self._emit(row, logits):
            self._join(row, cache)

    def _emit(self, row: _Row, logits: torch.Tensor) -> bool:
        """Sample the row's next token and hand it over; False when the row has ended."""
        generation = row.generation
        token = next_token(logits, self.engine.eos_index, generation.params, row.generated, row.generator,
                           row.counts, generation.token_logprobs)
        row.generated += 1
        row.tokens.put(token)
        if token == self.engine.eos_token_id or row.generated >= generation.budget:
            row.tokens.put(_DONE)
            return False
        row.last = token
        return True

    def _join(self, row: _Row, cache: DynamicCache) -> None:
        ones = torch.ones(1, row.length, dtype=torch.long, device=self.engine.device)
        if self._cache is None or self._mask is None:
            self._rows, self._cache, self._mask = [row], cache, ones
            return
        width = max(self._mask.shape[1], row.length)
        grow, pad = width - self._mask.shape[1], width - row.length
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([F.pad(mine.keys, (0, 0, grow, 0)), F.pad(theirs.keys, (0, 0, pad, 0))])
            mine.values = torch.cat([F.pad(mine.values, (0, 0, grow, 0)), F.pad(theirs.values, (0, 0, pad, 0))])
        self._mask = torch.cat([F.pad(self._mask, (grow, 0)), F.pad(ones, (pad, 0))])
        self._rows.append(row)

    def _drop(self, leaving: list[int], told: bool = False) -> None:
        """Take rows out of the batch (their readers get the end unless `told`), and trim the columns that
        only padding fills."""
        if not leaving:
            return
        if not told:
            for i in leaving:
                self._rows[i].tokens.put(_DONE)
        keep = [i for i in range(len(self._rows)) if i not in leaving]
        self._rows = [self._rows[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self.engine.device)
        mask = self._mask[index]
        start = int(mask.sum(0).nonzero()[0])  # the first column any remaining row uses
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]

    @torch.inference_mode()
    def _step(self) -> None:
        """One token for every row: a forward of [rows, 1] over the shared cache."""
        assert self._cache is not None and self._mask is not None
        engine, rows = self.engine, self._rows
        device = engine.device
        ids = torch.tensor([[row.last] for row in rows], device=device)
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long, device=device)], dim=1)
        if len(rows) == 1:  # alone (and so unpadded): decode as a request alone does, without mask or positions
            with active(rows[0].generation.factors):
                out = engine.model(input_ids=ids, cache=self._cache, use_cache=True, logits_to_keep=1)
        else:
            positions = torch.tensor([[row.length] for row in rows], device=device)
            with active(self._adapters(rows)):
                out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self._cache,
                                   use_cache=True, logits_to_keep=1)
        self._mask = mask
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(rows)
        ended = []
        for i, row in enumerate(rows):
            row.length += 1
            if not self._emit(row, out.logits[i, -1]):
                ended.append(i)
        self._drop(ended, told=True)

    def _adapters(self, rows: list[_Row]) -> RowAdapters | None:
        groups: dict[int, tuple[dict, list[int]]] = {}
        for i, row in enumerate(rows):
            factors = row.generation.factors
            if factors is not None:
                groups.setdefault(id(factors), (factors, []))[1].append(i)
        if not groups:
            return None
        device = self.engine.device
        return RowAdapters(tuple((None if len(idx) == len(rows) else torch.tensor(idx, device=device), factors)
                                 for factors, idx in groups.values()))
