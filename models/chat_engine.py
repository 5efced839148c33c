"""The chat engine: one base LLM per pair, loaded once, and many generated adapters switched per request.

Each LoRA target module of the base model is swapped for a `SwitchableLinear` that adds the low-rank
term of whichever adapter is active in the calling thread:

    y = x W^T (+ bias) + (x A^T) (scale * B)^T          A: [r, in], B: [out, r]

The active adapter is a context variable set around each forward call: one adapter for a request
decoding alone, or one per group of rows (`RowAdapters`) when the batcher (`models.chat_batch`) decodes
many requests in one forward. Requests on different adapters thus share the same weights without
mixing, and switching costs a variable assignment. (PEFT's multi-adapter model keeps the active adapter
on the model itself, which serializes requests on different adapters; `python -m bench.serving` measures
both.) Adapters are read from their safetensors files on first use and kept in a bounded
least-recently-used cache; the base model, the adapters and the decoding run on the model's device.

A request is a `Generation`: an iterator of text pieces, decoded one token at a time with a KV cache
(greedy at temperature 0, else seeded temperature / top-p sampling), ending on the end token (never
before `min_tokens`), a stop string, `max_tokens` or the context limit, or when it is cancelled from any
thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from models.device import resolve_device
from models.errors import AdapterError, GradliftError
from models.pairs import Pair, PairStore
from models.textdata import uses_chat

log = logging.getLogger(__name__)


class RequestError(GradliftError):
    """A chat request this engine cannot serve as asked (bad sampling values, too long for the context)."""


# ---- adapters: low-rank factors per module, applied by the thread that set them active ----

LoraFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A [r, in], scale * B [out, r])


@dataclass(frozen=True)
class RowAdapters:
    """A batch's adapters: (row indices, or None for every row; factors) per distinct adapter in it."""

    groups: tuple[tuple[torch.Tensor | None, LoraFactors], ...]


_ACTIVE: ContextVar[LoraFactors | RowAdapters | None] = ContextVar("gradlift_active_adapter", default=None)


class SwitchableLinear(torch.nn.Module):
    """A base Linear plus the active adapter's low-rank term for this module, if it has one."""

    def __init__(self, base: torch.nn.Linear, name: str) -> None:
        super().__init__()
        self.weight, self.bias, self.name = base.weight, base.bias, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        active = _ACTIVE.get()
        groups = active.groups if isinstance(active, RowAdapters) else ((None, active),) if active else ()
        for rows, factors in groups:
            if (ab := factors.get(self.name)) is None:
                continue
            if rows is None:  # every row
                out = out + F.linear(F.linear(x, ab[0]), ab[1])
            else:
                out = out.index_add(0, rows, F.linear(F.linear(x[rows], ab[0]), ab[1]))
        return out


def make_switchable(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Swap every target Linear for a SwitchableLinear in place; returns {module name: (out, in)}."""
    shapes = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, SwitchableLinear(module, name))
            shapes[name] = tuple(module.weight.shape)
    if not shapes:
        raise AdapterError(f"the model has no Linear modules named {targets}")
    return shapes


def read_factors(path: Path, shapes: dict[str, tuple[int, int]], scale: float,
                 device: torch.device | str = "cpu") -> LoraFactors:
    """An adapter's PEFT safetensors file as per-module factors on `device`, checked against the base model."""
    tensors = load_file(str(path))
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if ".lora_" not in name:
            raise AdapterError(f"not a LoRA tensor name: {name!r}")
        module = name[: name.index(".lora_")].removeprefix("base_model.model.")
        by_module.setdefault(module, {})[name[name.index(".lora_") + 6]] = tensor.float()
    factors: LoraFactors = {}
    for module, ab in by_module.items():
        if module not in shapes or set(ab) != {"A", "B"}:
            raise AdapterError(f"adapter tensors for {module!r} do not fit this model's LoRA targets")
        out_features, in_features = shapes[module]
        a, b = ab["A"], ab["B"]
        if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise AdapterError(f"adapter {module!r}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                               f"a Linear of {in_features} -> {out_features}")
        factors[module] = (a.contiguous().to(device), (scale * b).contiguous().to(device))
    return factors


def factors_bytes(factors: LoraFactors) -> int:
    return sum(t.numel() * t.element_size() for pair in factors.values() for t in pair)


@dataclass(frozen=True)
class AdapterRef:
    """A generated adapter: its id (immutable content) and its PEFT safetensors file."""

    id: str
    path: Path


# ---- sampling ----

@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: until the end token or the context limit
    min_tokens: int = 0  # the end token is not chosen before this many tokens (as vLLM's min_tokens)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise RequestError(f"min_tokens must be in [0, max_tokens], not {self.min_tokens}")
        if not 0 <= self.temperature <= 2 or not 0 < self.top_p <= 1:
            raise RequestError(f"temperature must be in [0, 2] and top_p in (0, 1]: {self}")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from last-position logits [vocab]: argmax at temperature 0, else top-p sampling."""
    if params.temperature == 0:
        return int(logits.argmax())
    # Sampled on the CPU with the request's CPU generator, wherever the logits were computed.
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = sorted_probs.cumsum(0) - sorted_probs >= params.top_p
        sorted_probs[drop] = 0
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


# ---- one request ----

def token_budget(context_length: int, prompt_tokens: int, params: SamplingParams) -> int:
    """The most tokens a request may generate: max_tokens, or what the context has left."""
    budget = context_length - prompt_tokens
    return budget if params.max_tokens is None else min(budget, params.max_tokens)


def request_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's random source, on the CPU, so one seed samples the same tokens on every device."""
    if params.temperature == 0:
        return None
    return torch.Generator().manual_seed(params.seed if params.seed is not None else int(time.time_ns() % 2**63))


def next_token(logits: torch.Tensor, engine: ChatEngine, params: SamplingParams, generated: int,
               generator: torch.Generator | None) -> int:
    """The next token from one request's last-position logits [vocab]; the end token is held back until
    `min_tokens` have been generated (as transformers' min_new_tokens does)."""
    if generated < params.min_tokens:
        logits = logits.index_fill(0, engine.eos_index, float("-inf"))
    return pick_token(logits, params, generator)


TokenSource = Iterator[int]  # sampled token ids, one request's, ending early only if it was cancelled


class Generation:
    """An iterator of text pieces for one request; `finish_reason` and the token counts are set as it runs.

    The tokens come from a source: the request's own decoding loop in the iterating thread, or the
    engine's batcher (`models.chat_batch`), which decodes every running request together. Not thread-safe
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
        ids, generated = torch.tensor([self.prompt_ids], device=engine.device), 0
        while not self._cancel.is_set():
            token = next_token(engine.forward(ids, cache, self.factors), engine, self.params, generated, generator)
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
        requests decode together, up to that many per forward (`models.chat_batch`); with 1 each request
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
            from models.chat_batch import Batcher

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


@contextmanager
def active(factors: LoraFactors | RowAdapters | None) -> Iterator[None]:
    token = _ACTIVE.set(factors)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


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
