"""Update vectors and layer tokens: exact round trips, the paper's layout, and what user files may hold."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.errors import AdapterError
from models.lora.update import LoraLayout, add, delta_weight, mean, merge_into, subtract, validate_adapter_file


def fake_init(layers: int = 3, h: int = 8, kv: int = 4, r: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        for mod, width in (("q_proj", h), ("v_proj", kv)):
            base = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            out[f"{base}.lora_A.weight"] = torch.randn(r, h)
            out[f"{base}.lora_B.weight"] = torch.zeros(width, r)
    return out


def test_layer_tokens_round_trip_exactly_and_follow_the_papers_order():
    init = fake_init()
    layout = LoraLayout(init, ("q_proj", "v_proj"))
    assert layout.num_layers == 3
    assert layout.token_dim == 2 * (3 * 8 + 4)  # r * (3h + kv), as in the paper
    update = {k: torch.randn_like(v) for k, v in init.items()}
    tokens = layout.to_tokens(update)
    back = layout.from_tokens(tokens)
    assert all(torch.equal(back[k], update[k]) for k in update)
    # layer 1's token starts with q.A, then q.B, v.A, v.B
    q_a = update["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].flatten()
    v_b = update["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].flatten()
    assert torch.equal(tokens[1, : q_a.numel()], q_a)
    assert torch.equal(tokens[1, -v_b.numel():], v_b)


def test_tokens_of_the_wrong_shape_are_refused():
    layout = LoraLayout(fake_init(), ("q_proj", "v_proj"))
    with pytest.raises(AdapterError, match="shape"):
        layout.from_tokens(torch.zeros(2, layout.token_dim))


def test_update_is_the_change_of_lora_parameters_not_the_dense_product():
    init = fake_init()
    adapter = {k: v + 0.5 for k, v in init.items()}
    update = subtract(adapter, init)
    assert all(torch.allclose(u, torch.full_like(u, 0.5)) for u in update.values())
    assert all(torch.allclose(add(init, update)[k], adapter[k]) for k in init)
    assert torch.allclose(mean([update, {k: -v for k, v in update.items()}])[next(iter(init))], torch.zeros(1))


def test_merge_adds_scale_times_b_a_to_each_target_weight():
    lin = torch.nn.Module()
    lin.model = torch.nn.Module()
    lin.model.layers = torch.nn.ModuleList([torch.nn.Module()])
    lin.model.layers[0].self_attn = torch.nn.Module()
    lin.model.layers[0].self_attn.q_proj = torch.nn.Linear(8, 8, bias=False)
    before = lin.model.layers[0].self_attn.q_proj.weight.detach().clone()
    a, b = torch.randn(2, 8), torch.randn(8, 2)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    merge_into(lin, {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, scale=16.0)
    assert torch.allclose(lin.model.layers[0].self_attn.q_proj.weight, before + delta_weight(a, b, 16.0))


# ---- user files ----

def write(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, dict]:
    init = fake_init(layers=1)
    path = tmp_path / "adapter_model.safetensors"
    save_file(init, str(path))
    return path, {k: tuple(v.shape) for k, v in init.items()}


def test_a_valid_adapter_passes(good):
    validate_adapter_file(*good)


@pytest.mark.parametrize("case, message", [
    ("empty", "empty or truncated"),
    ("long_header", "longer than the file"),
    ("bad_dtype", "dtype I64"),
    ("overlap", "overlap"),
    ("truncated", "truncated"),
    ("wrong_shape", "expected"),
    ("missing", "missing tensor"),
    ("extra", "unexpected tensor"),
    ("nan", "NaN"),
    ("huge", "magnitude"),
    ("pickle", "not a safetensors file"),
])
def test_bad_files_are_refused_with_the_first_problem_named(tmp_path, good, case, message):
    path, shapes = good
    names = list(shapes)
    bad = tmp_path / "bad.safetensors"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "long_header":
        write(bad, {}, length=10_000)
    elif case == "bad_dtype":
        write(bad, {names[0]: {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    elif case == "overlap":
        write(bad, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12)
    elif case == "truncated":
        bad.write_bytes(path.read_bytes()[:-16])
    elif case == "pickle":
        bad.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    else:
        tensors = fake_init(layers=1)
        if case == "wrong_shape":
            tensors[names[0]] = torch.zeros(3, 8)
        elif case == "missing":
            del tensors[names[0]]
        elif case == "extra":
            tensors["base_model.model.lm_head.weight"] = torch.zeros(1)
        elif case == "nan":
            tensors[names[1]][0, 0] = float("nan")
        elif case == "huge":
            tensors[names[0]][0, 0] = 1e9
        save_file(tensors, str(bad))
    with pytest.raises(AdapterError, match=message):
        validate_adapter_file(bad, shapes)


def test_half_precision_uploads_are_accepted(tmp_path, good):
    _, shapes = good
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in fake_init(layers=1).items()}, str(path))
    validate_adapter_file(path, shapes)


def test_mean_is_the_element_wise_average_of_its_updates():
    a = {"x": torch.tensor([1.0, 2.0, -3.0]), "y": torch.tensor([[0.5]])}
    b = {"x": torch.tensor([3.0, 0.0, 1.0]), "y": torch.tensor([[1.5]])}
    c = {"x": torch.tensor([2.0, 4.0, 5.0]), "y": torch.tensor([[-0.5]])}
    got = mean([a, b, c])
    assert torch.equal(got["x"], torch.tensor([2.0, 2.0, 1.0])) and torch.equal(got["y"], torch.tensor([[0.5]]))
    assert torch.equal(mean([a])["x"], a["x"])
