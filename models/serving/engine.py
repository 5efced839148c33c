"""The chat engine: one base LLM per pair, loaded once, and many generated adapters switched per request.

Adapters (`models.serving.adapters`) are read from their safetensors files on first use and kept in a
bounded least-recently-used cache; the base model, the adapters and the decoding run on the model's
device. (PEFT's multi-adapter model keeps the active adapter on the model itself, which serializes
requests on different adapters; `python -m bench.serving` measures both.)

A request is a `Generation`: an iterator of text pieces, decoded one token at a time with a KV cache
(greedy at temperature 0, else seeded temperature / top-p sampling: `models.serving.sampling`), ending on
the end token (never before `min_tokens`), a stop string, `max_tokens` or the context limit, or when it is
cancelled from any thread. With batching on, the engine owns a `Batcher` (`models.serving.batch`) that
decodes every running request together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from models.data.textdata import uses_chat
from models.device import resolve_device
from models.pairs import Pair, PairStore
from models.serving.adapters import AdapterRef, LoraFactors, active, factors_bytes, make_switchable, read_factors
from models.serving.batch import Batcher
from models.serving.sampling import (
    RequestError,
    SamplingParams,
    TokenLogprob,
    TokenSource,
    next_token,
    request_generator,
    token_budget,
)

log = logging.getLogger(__name__)


class Generation:
    """An iterator of text pieces for one request; `finish_reason` and the token counts are set as it runs.

    The tokens come from a source: the request's own decoding loop in the iterating thread, or the
    engine's batcher (`models.serving.batch`), which decodes every running request together. Not thread-safe
    to iterate from two threads at once; `cancel()` (or setting the `cancel` event it was made with) may
    be done from any thread.
    """

    def __init__(self, engine: ChatEngine, prompt_ids: list[int], params: SamplingParams,
                 factors: LoraFactors | None, cancel: threading.Event | None = None) -> None:
        self.engine, self.params, self.factors = engine, params, factors
        self.prompt_ids = prompt_ids
        self.prompt_tokens, self.completion_tokens = len(prompt_ids), 0
        self.budget = token_budget(engine.context_length, self.prompt_tokens, params)
        self.finish_reason: str | None = None  # "stop", "length", or "cancelled"
        # With params.logprobs: one per sampled token, appended by the decoding thread before it hands the token over.
        self.token_logprobs: list[TokenLogprob] = []
        self._cancel = cancel if cancel is not None else threading.Event()
        self._pieces = self._run()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def text(self) -> str:
        """Run to the end; the whole completion."""
        return "".join(self)

    def _own_tokens(self) -> TokenSource:
        """Decode alone, in the iterating thread, with a KV cache of its own."""
        engine, generator = self.engine, request_generator(self.params)
        cache = DynamicCache(config=engine.model.config)
        ids, generated, counts = torch.tensor([self.prompt_ids], device=engine.device), 0, {}
        while not self._cancel.is_set():
            token = next_token(engine.forward(ids, cache, self.factors), engine.eos_index, self.params, generated,
                               generator, counts, self.token_logprobs)
            generated += 1
            yield token
            ids = torch.tensor([[token]], device=engine.device)

    def _run(self) -> Iterator[str]:
        engine, stop = self.engine, self.params.stop
        batcher = engine.batcher
        source = batcher.submit(self) if batcher is not None else self._own_tokens()
        completion, emitted = [], 0
        hold = max((len(s) for s in stop), default=1) - 1  # text that may still grow into a stop string
        try:
            for token in source:
                self.completion_tokens += 1
                if token == engine.eos_token_id:
                    self.finish_reason = "stop"
                    break
                completion.append(token)
                text = engine.tokenizer.decode(completion, skip_special_tokens=True)
                cut = min((i for s in stop if (i := text.find(s, max(0, emitted - hold))) >= 0), default=-1)
                if cut >= 0:
                    self.finish_reason = "stop"
                    if cut > emitted:
                        yield text[emitted:cut]
                    return
                if len(completion) >= self.budget:
                    self.finish_reason = "length"
                    break
                ready = len(text) - hold if stop else len(text)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    ready = min(ready, len(text) - 1)
                if ready > emitted:
                    yield text[emitted:ready]
                    emitted = ready
            else:
                self.finish_reason = "cancelled"
                return
        finally:
            source.close()  # a batched request leaves the batch (a stop string, or the consumer went away)
        text = engine.tokenizer.decode(completion, skip_special_tokens=True)
        if len(text) > emitted:
            yield text[emitted:]


# ---- the engine ----

class ChatEngine:
    """One base LLM with switchable adapters, shared by every request on its pair."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, targets: tuple[str, ...],
                 scale: float, max_adapters: int = 32, model_id: str = "base", max_batch: int = 1) -> None:
        """`model` stays on its device; adapters and requests follow it there. With `max_batch` > 1 running
        requests decode together, up to that many per forward (`models.serving.batch`); with 1 each request
        decodes alone in the thread that iterates it."""
        if max_adapters < 1 or max_batch < 1:
            raise RequestError(f"max_adapters and max_batch must be at least 1, not {max_adapters}, {max_batch}")
        self.model, self.tokenizer, self.scale, self.model_id = model.eval(), tokenizer, scale, model_id
        self.device = next(model.parameters()).device
        self.max_adapters = max_adapters
        self.shapes = make_switchable(self.model, targets)
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_token_id = tokenizer.eos_token_id
        self.eos_index = torch.tensor([] if self.eos_token_id is None else [self.eos_token_id], dtype=torch.long,
                                      device=self.device)
        self._adapters: OrderedDict[str, LoraFactors] = OrderedDict()
        self._lock = threading.Lock()
        self.adapter_loads = 0  # reads from disk: a cache miss each
        self.batcher = None
        if max_batch > 1:
            self.batcher = Batcher(self, max_batch)

    @classmethod
    def from_pair(cls, pair: Pair, max_adapters: int = 32, device: torch.device | str = "cpu",
                  max_batch: int = 1) -> ChatEngine:
        return cls(pair.load_model("llm", device), pair.load_tokenizer("llm"), pair.spec.lora.targets,
                   pair.spec.lora.scale, max_adapters, model_id=pair.id, max_batch=max_batch)

    # adapters

    def adapter(self, ref: AdapterRef) -> LoraFactors:
        """The adapter's factors, read from disk on a miss; the least recently used one is evicted."""
        with self._lock:
            factors = self._adapters.get(ref.id)
            if factors is not None:
                self._adapters.move_to_end(ref.id)
                return factors
        factors = read_factors(ref.path, self.shapes, self.scale, self.device)  # outside the lock: other requests go on
        with self._lock:
            self.adapter_loads += 1
            self._adapters[ref.id] = factors
            self._adapters.move_to_end(ref.id)
            while len(self._adapters) > self.max_adapters:
                evicted, _ = self._adapters.popitem(last=False)
                log.info("chat engine %s: evicted adapter %s", self.model_id, evicted)
        return factors

    def resident(self) -> list[str]:
        """Ids of the adapters in memory, least recently used first."""
        with self._lock:
            return list(self._adapters)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of tensors the engine holds: the base model's and the resident adapters'."""
        base = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        with self._lock:
            adapters = sum(factors_bytes(f) for f in self._adapters.values())
        return {"base": base, "adapters": adapters, "total": base + adapters}

    # requests

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids for a conversation: the chat template if the tokenizer has one, else plain text
        (the messages' contents joined by newlines; one user message is exactly its prompt)."""
        if uses_chat(self.tokenizer):
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                           return_dict=False))
        text = "\n".join(m["content"] for m in messages)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompt_ids: list[int], params: SamplingParams, adapter: AdapterRef | None = None,
                 cancel: threading.Event | None = None) -> Generation:
        """Start a request (nothing runs until it is iterated; setting `cancel` stops it at the next
        token); RequestError if it cannot fit."""
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        wanted = len(prompt_ids) + (params.max_tokens or 1)
        if wanted > self.context_length:
            raise RequestError(f"this model's maximum context length is {self.context_length} tokens; the "
                               f"prompt has {len(prompt_ids)} and max_tokens asks for {params.max_tokens or 1} "
                               "more")
        factors = self.adapter(adapter) if adapter is not None else None
        return Generation(self, prompt_ids, params, factors, cancel)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: DynamicCache, factors: LoraFactors | None) -> torch.Tensor:
        """Last-position logits [vocab] for new ids [1, T], with `factors` active in this thread only."""
        with active(factors):
            out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


class ChatEngines:
    """One engine per pair, each built on its first request."""

    def __init__(self, pairs_dir: Path, max_adapters: int = 32, torch_threads: int | None = None,
                 device: str = "auto", max_batch: int = 1) -> None:
        self.pairs = PairStore(Path(pairs_dir))
        self.max_adapters, self.device, self.max_batch = max_adapters, resolve_device(device), max_batch
        self._engines: dict[str, ChatEngine] = {}
        self._lock = threading.Lock()
        if torch_threads:
            # Process-wide: several requests decode at once, each in its own thread, so one intra-op
            # thread each keeps them from fighting over the cores.
            torch.set_num_threads(torch_threads)

    def get(self, pair_id: str) -> ChatEngine:
        with self._lock:
            if pair_id not in self._engines:
                start = time.perf_counter()
                self._engines[pair_id] = ChatEngine.from_pair(self.pairs.get(pair_id), self.max_adapters, self.device,
                                                              self.max_batch)
                log.info("chat engine for pair %s loaded on %s in %.1fs", pair_id, self.device,
                         time.perf_counter() - start)
            return self._engines[pair_id]
