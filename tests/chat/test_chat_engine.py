"""The chat engine on the toy pair, in process: outputs equal the merged model's, adapters never mix,
the LRU bounds what is resident, sampling and stopping behave as OpenAI's parameters say."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from models.data.tasks import get_task, make_splits
from models.errors import AdapterError
from models.pairs import Pair, PairStore
from models.serving.adapters import AdapterRef
from models.serving.engine import ChatEngine
from models.serving.sampling import RequestError, SamplingParams, pick_token

GREEDY = SamplingParams(max_tokens=12, temperature=0)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def pair(chat_pair: Pair) -> Pair:
    return chat_pair


@pytest.fixture(scope="module")
def engine(pair: Pair) -> ChatEngine:
    return ChatEngine.from_pair(pair, max_adapters=4)


def ref(folder: Path) -> AdapterRef:
    return AdapterRef(folder.name, folder / "adapter_model.safetensors")


def prompts(pair: Pair, n: int = 6) -> list[str]:
    return [ex.prompt for ex in make_splits(get_task(pair.spec.tasks[0]), seed=pair.spec.seed).test[:n]]


def complete(engine: ChatEngine, prompt: str, adapter: AdapterRef | None, params: SamplingParams = GREEDY) -> str:
    return engine.generate(engine.prompt_ids([{"role": "user", "content": prompt}]), params, adapter).text()


def test_greedy_output_equals_generate_on_the_merged_model(pair: Pair, engine: ChatEngine, upgraded: Path) -> None:
    from models.data.evaluate import answers
    from models.lora.update import merge_into, read_adapter

    merged = merge_into(pair.load_model("llm"), read_adapter(upgraded / "adapter_model.safetensors"),
                        pair.spec.lora.scale)
    texts = prompts(pair)
    ours = [complete(engine, p, ref(upgraded)).strip() for p in texts]
    assert ours == answers(merged, engine.tokenizer, texts, max_new_tokens=12, batch_size=1)
    base = [complete(engine, p, None).strip() for p in texts]
    assert base == answers(pair.load_model("llm"), engine.tokenizer, texts, max_new_tokens=12, batch_size=1)
    assert ours != base, "the upgraded adapter changes no answer"


def test_interleaved_and_parallel_requests_keep_their_own_adapter(pair: Pair, engine: ChatEngine, upgraded: Path,
                                                                  upgraded_other: Path) -> None:
    adapters = [ref(upgraded), ref(upgraded_other), None]
    prompt = engine.prompt_ids([{"role": "user", "content": prompts(pair)[0]}])
    solo = [engine.generate(prompt, GREEDY, a).text() for a in adapters]
    assert len(set(solo)) == 3, solo

    # Step the three generations one token each in turn, on the same weights.
    running = [engine.generate(prompt, GREEDY, a) for a in adapters]
    pieces: list[list[str]] = [[], [], []]
    while running:
        for i, generation in list(enumerate(running)):
            piece = next(generation, None)
            if piece is None:
                running[i] = None
            else:
                pieces[i].append(piece)
        running = [g for g in running if g is not None]
    assert ["".join(p) for p in pieces] == solo

    # And in parallel threads, started together.
    barrier, results = threading.Barrier(6), {}

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = [engine.generate(prompt, GREEDY, adapters[i % 3]).text() for _ in range(3)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[i] == [solo[i % 3]] * 3 for i in range(6)), results


def test_least_recently_used_adapter_is_evicted(pair: Pair, upgraded: Path, upgraded_other: Path) -> None:
    engine = ChatEngine.from_pair(pair, max_adapters=2)
    a, b = ref(upgraded), ref(upgraded_other)
    c = AdapterRef("copy", a.path)
    for adapter in (a, b, a, c):
        engine.adapter(adapter)
    assert engine.resident() == [a.id, c.id]  # b was the least recently used
    assert engine.adapter_loads == 3
    one = engine.memory_bytes()
    assert one["adapters"] > 0 and one["total"] == one["base"] + one["adapters"]
    engine.adapter(b)
    two = engine.memory_bytes()
    assert two["adapters"] == one["adapters"] and engine.adapter_loads == 4


def test_an_adapter_that_does_not_fit_is_refused(pair: Pair, engine: ChatEngine, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    save_file({name.format("A"): torch.zeros(2, 7), name.format("B"): torch.zeros(128, 2)}, str(bad))
    with pytest.raises(AdapterError, match="do not fit"):
        engine.adapter(AdapterRef("bad", bad))


def test_stop_max_tokens_and_context_limit(pair: Pair, engine: ChatEngine, upgraded: Path) -> None:
    prompt = prompts(pair)[0]
    full = complete(engine, prompt, ref(upgraded))
    assert len(full) > 3
    stop = full[2:4]
    stopped = engine.generate(engine.prompt_ids([{"role": "user", "content": prompt}]),
                              SamplingParams(max_tokens=12, temperature=0, stop=(stop,)), ref(upgraded))
    # text ends where the stop string first appears, which may be before position 2 ("wwww")
    assert stopped.text() == full[:full.index(stop)] and stopped.finish_reason == "stop"
    short = engine.generate(engine.prompt_ids([{"role": "user", "content": prompt}]),
                            SamplingParams(max_tokens=2, temperature=0), ref(upgraded))
    assert short.text() == full[:2] and short.finish_reason == "length" and short.completion_tokens == 2
    with pytest.raises(RequestError, match="maximum context length"):
        engine.generate([5] * engine.context_length, SamplingParams(max_tokens=1))
    with pytest.raises(RequestError):
        SamplingParams(temperature=3)


def test_min_tokens_holds_back_the_end_token_as_min_new_tokens_does(pair: Pair, engine: ChatEngine,
                                                                     upgraded: Path) -> None:
    from models.data.textdata import prompt_ids

    prompt = prompts(pair)[0]
    ids = engine.prompt_ids([{"role": "user", "content": prompt}])
    held = SamplingParams(max_tokens=30, min_tokens=30, temperature=0)
    for adapter in (ref(upgraded), None):
        generation = engine.generate(ids, held, adapter)
        text = generation.text()
        assert generation.completion_tokens == 30 and generation.finish_reason == "length"
        assert text.startswith(complete(engine, prompt, adapter))
    # On the base weights (nothing merged, so no rounding apart) the tokens equal transformers' own.
    inputs = torch.tensor([prompt_ids(engine.tokenizer, prompt)])
    out = pair.load_model("llm").generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                          max_new_tokens=30, min_new_tokens=30,
                                          pad_token_id=engine.tokenizer.pad_token_id,
                                          eos_token_id=engine.tokenizer.eos_token_id)
    assert text == engine.tokenizer.decode(out[0, inputs.shape[1]:], skip_special_tokens=True)
    with pytest.raises(RequestError):
        SamplingParams(max_tokens=2, min_tokens=3)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(pair: Pair, engine: ChatEngine) -> None:
    prompt = prompts(pair)[1]
    hot = SamplingParams(max_tokens=20, temperature=1.5, seed=7)
    assert complete(engine, prompt, None, hot) == complete(engine, prompt, None, hot)
    draws = {complete(engine, prompt, None, SamplingParams(max_tokens=20, temperature=1.5, seed=s)) for s in range(4)}
    assert len(draws) > 1
    narrow = SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1)
    assert complete(engine, prompt, None, narrow) == complete(engine, prompt, None)
    logits = torch.tensor([0.0, 5.0, 1.0])
    assert pick_token(logits, SamplingParams(temperature=0), None) == 1


def test_cancel_stops_decoding(pair: Pair, engine: ChatEngine) -> None:
    generation = engine.generate(engine.prompt_ids([{"role": "user", "content": prompts(pair)[0]}]),
                                 SamplingParams(temperature=0))
    first = next(generation)
    generation.cancel()
    assert first and list(generation) == [] and generation.finish_reason == "cancelled"
    assert generation.completion_tokens == 1


def test_chat_template_is_used_when_the_tokenizer_has_one(pair: Pair) -> None:
    engine = ChatEngine.from_pair(pair)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "rol ?: abc #### "}]
    plain = engine.prompt_ids(messages)
    assert engine.tokenizer.decode(plain) == "be brief\nrol ?: abc #### "
    engine.tokenizer.chat_template = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}a:"
    assert engine.tokenizer.decode(engine.prompt_ids(messages)) == "s:be brief\nu:rol ?: abc #### \na:"


@needs_cuda
def test_on_a_gpu_the_engine_answers_as_on_the_cpu(pair: Pair, engine: ChatEngine, upgraded: Path,
                                                   upgraded_other: Path) -> None:
    gpu = ChatEngine.from_pair(pair, max_adapters=4, device="cuda")
    assert gpu.device.type == "cuda" and gpu.eos_index.device.type == "cuda"
    texts = prompts(pair)
    for adapter in (ref(upgraded), ref(upgraded_other), None):
        assert [complete(gpu, p, adapter) for p in texts] == [complete(engine, p, adapter) for p in texts]
    factors = gpu.adapter(ref(upgraded))
    assert all(a.device.type == "cuda" and b.device.type == "cuda" for a, b in factors.values())
    hot = SamplingParams(max_tokens=20, temperature=1.5, seed=7)  # sampled on the CPU from the GPU's logits
    assert complete(gpu, texts[1], None, hot) == complete(gpu, texts[1], None, hot)
    batched = ChatEngine.from_pair(pair, max_adapters=4, device="cuda", max_batch=8)
    jobs = [(p, a) for p in texts for a in (ref(upgraded), ref(upgraded_other), None)]
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, complete(batched, *jobs[i])))
               for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results.get(i) for i in range(len(jobs))] == [complete(engine, p, a) for p, a in jobs]


@pytest.fixture(scope="module")
def batched(pair: Pair) -> ChatEngine:
    return ChatEngine.from_pair(pair, max_adapters=4, max_batch=8)


def test_batched_requests_on_different_adapters_answer_as_they_do_alone(pair: Pair, engine: ChatEngine,
                                                                        batched: ChatEngine, upgraded: Path,
                                                                        upgraded_other: Path) -> None:
    adapters = [ref(upgraded), ref(upgraded_other), None]
    texts = prompts(pair) + ["rol ?: ab #### ", "separate 7 ?: " + "x" * 24]  # prompt lengths differ
    variants = [GREEDY, SamplingParams(max_tokens=3, temperature=0),
                SamplingParams(max_tokens=30, min_tokens=30, temperature=0)]
    jobs = [(p, a, v) for i, p in enumerate(texts) for a in adapters for v in variants[i % 3:i % 3 + 1]]
    alone = [complete(engine, p, a, v) for p, a, v in jobs]
    assert len(set(alone)) > len(texts), "the adapters change nothing"
    barrier, results = threading.Barrier(len(jobs)), {}

    def worker(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = complete(batched, *jobs[i])

    steps_before, rows_before = batched.batcher.steps, batched.batcher.rows_stepped
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results.get(i) for i in range(len(jobs))] == alone
    steps, rows = batched.batcher.steps - steps_before, batched.batcher.rows_stepped - rows_before
    assert rows / steps > 2, f"{rows} rows in {steps} steps: the requests did not share forwards"


def test_a_batched_request_leaves_the_batch_when_cancelled_or_stopped(pair: Pair, engine: ChatEngine,
                                                                       batched: ChatEngine, upgraded: Path) -> None:
    long = SamplingParams(max_tokens=40, min_tokens=40, temperature=0)
    prompt = prompts(pair)[0]
    ids = batched.prompt_ids([{"role": "user", "content": prompt}])
    full = complete(engine, prompt, ref(upgraded), long)
    cancelled = batched.generate(ids, long, ref(upgraded))
    first = next(cancelled)
    neighbour = batched.generate(ids, long, ref(upgraded))
    assert next(neighbour) == first
    cancelled.cancel()
    assert list(cancelled) == [] and cancelled.finish_reason == "cancelled"  # tokens already decoded are dropped
    assert first + "".join(neighbour) == full and neighbour.finish_reason == "length"
    stop = full[5:7]
    stopped = batched.generate(ids, SamplingParams(max_tokens=40, min_tokens=40, temperature=0, stop=(stop,)),
                               ref(upgraded))
    assert stopped.text() == full[:full.index(stop)] and stopped.finish_reason == "stop"
    assert complete(batched, prompt, ref(upgraded), long) == full  # the batch carries on


def test_concurrent_first_requests_load_the_pair_once(chat_pairs_dir: Path) -> None:
    from models.serving.engine import ChatEngines

    engines, got, barrier = ChatEngines(chat_pairs_dir), {}, threading.Barrier(6)

    def first_request(i: int) -> None:
        barrier.wait(timeout=30)
        engine = engines.get("toy")
        got[i] = (engine, complete(engine, "rol ?: abc #### ", None))

    threads = [threading.Thread(target=first_request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len({id(engine) for engine, _ in got.values()}) == 1 and len({text for _, text in got.values()}) == 1
    # Models loaded in several threads at once all get real weights (transformers' meta-device switch is global).
    pair, models = PairStore(chat_pairs_dir).get("toy"), {}
    loaders = [threading.Thread(target=lambda i=i: models.__setitem__(i, pair.load_model("llm"))) for i in range(4)]
    for t in loaders:
        t.start()
    for t in loaders:
        t.join(timeout=120)
    assert all(not p.is_meta for m in models.values() for p in m.parameters()) and len(models) == 4


def test_a_request_cancelled_while_waiting_for_room_ends_before_the_batch_has_room(smol_pairs_dir: Path) -> None:
    """A full batch (two long requests, room for two) and a third request waiting: cancelling the third ends it
    within a step or two, not when a running request leaves. Counted in batched forwards, not seconds: SmolLM2's
    forwards are slow enough that the waiting request would otherwise see ~60 of them."""
    batched = ChatEngine.from_pair(PairStore(smol_pairs_dir).get("smol"), max_adapters=1, max_batch=2)
    long = SamplingParams(max_tokens=60, min_tokens=60, temperature=0)
    ids = batched.prompt_ids([{"role": "user", "content": "Name a colour."}])
    running = [batched.generate(ids, long) for _ in range(2)]
    for generation in running:
        next(generation)  # admitted: the batch is full
    waiting = batched.generate(ids, long)
    steps = batched.batcher.steps
    waiting.cancel()
    assert list(waiting) == [] and waiting.finish_reason == "cancelled"
    assert batched.batcher.steps - steps <= 5, "the cancelled request waited for room in the batch"
    for generation in running:
        generation.cancel()
        assert list(generation) == [] and generation.finish_reason == "cancelled"
