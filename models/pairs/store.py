"""Model pairs: a TinyLM, an LLM, one LoRA configuration and the LoRA init tensors of both.

A pair lives in one folder:
    pair.json                  the PairSpec
    tiny/, llm/                save_pretrained folders (weights + tokenizer)
    tiny_lora_init.safetensors the TinyLM's A0 and B0, PEFT tensor names: published to clients
    llm_lora_init.safetensors  the LLM's A0 and B0: every shadow fine-tune and every generated adapter
    gts/<gt_id>/               trained Gradient Transformers (one per task, or "all")
    shadow/                    shadow-pair snapshots
The init tensors are data, written once when the pair is built and only ever read after that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import NotFoundError
from models.lora.header import read_header
from models.lora.spec import LoraSpec

if TYPE_CHECKING:  # torch and transformers load lazily: the API lists pairs without them
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ALL_TASKS = "all"  # the id of a GT trained on every task of its pair


@dataclass(frozen=True)
class PairSpec:
    id: str
    tiny: str  # where the TinyLM came from (a local folder, a package, a hub id)
    llm: str
    lora: LoraSpec = field(default_factory=LoraSpec)
    seed: int = 0
    tasks: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PairSpec:
        data = dict(data)
        data["lora"] = LoraSpec(**data.get("lora", {}))
        data["tasks"] = tuple(data.get("tasks", ()))
        return cls(**data)


class Pair:
    """A built pair on disk."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / "pair.json"
        if not path.is_file():
            raise NotFoundError(f"no pair at {self.root}")
        self.spec = PairSpec.from_dict(json.loads(path.read_text()))

    id = property(lambda self: self.spec.id)
    tiny_dir = property(lambda self: self.root / "tiny")
    llm_dir = property(lambda self: self.root / "llm")
    tiny_init_path = property(lambda self: self.root / "tiny_lora_init.safetensors")
    llm_init_path = property(lambda self: self.root / "llm_lora_init.safetensors")
    shadow_dir = property(lambda self: self.root / "shadow")

    @property
    def llm_name(self) -> str:
        """What the pair's LLM is called where this machine's paths mean nothing: the service's model id for
        it (`GET /v1/models`), written as a generated adapter's `base_model_name_or_path`."""
        return f"{self.id}-llm"

    def gt_dir(self, gt_id: str) -> Path:
        return self.root / "gts" / gt_id

    def gt_ids(self) -> list[str]:
        gts = self.root / "gts"
        return sorted(p.name for p in gts.iterdir() if (p / "config.json").is_file()) if gts.is_dir() else []

    def init(self, side: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.tiny_init_path if side == "tiny" else self.llm_init_path)

    def tiny_adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes an uploaded TinyLM adapter must have, read from the init file's header."""
        return {name: tuple(info["shape"]) for name, info in read_header(self.tiny_init_path).items()}

    def model_dir(self, side: str) -> Path:
        return self.tiny_dir if side == "tiny" else self.llm_dir

    def load_model(self, side: str, device: torch.device | str = "cpu") -> PreTrainedModel:
        import torch
        from transformers import AutoModelForCausalLM

        with _LOADING:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir(side), dtype=torch.float32)
        return model.to(device).eval()

    def load_config(self, side: str) -> PretrainedConfig:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.model_dir(side))

    def load_tokenizer(self, side: str = "llm") -> PreTrainedTokenizerBase:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir(side))


# transformers builds a model on the meta device under a process-wide switch: two threads loading at once
# can leave one with weights that have no data. Loads take turns.
_LOADING = threading.Lock()


class PairStore:
    """The pairs under one folder, by id."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "pair.json").is_file())

    def get(self, pair_id: str) -> Pair:
        if pair_id not in self.ids():
            raise NotFoundError(f"unknown pair {pair_id!r}; known: {', '.join(self.ids()) or 'none'}")
        return Pair(self.root / pair_id)


def make_lora_init(model: PreTrainedModel, lora: LoraSpec, seed: int) -> dict[str, torch.Tensor]:
    """Seeded LoRA init tensors (A0 random, B0 zero) under PEFT's saved names."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora.peft_config())
    state = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    peft_model.unload()
    return state


def write_pair(root: Path, spec: PairSpec) -> Pair:
    """Write pair.json and both init files for models already saved in root/tiny and root/llm."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    for side in ("tiny", "llm"):
        model = AutoModelForCausalLM.from_pretrained(root / side, dtype=torch.float32)
        init = make_lora_init(model, spec.lora, spec.seed + (0 if side == "tiny" else 1))
        save_file(init, str(root / f"{side}_lora_init.safetensors"))
    (root / "pair.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True))
    return Pair(root)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never build the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# pair id -> builder(out, seed) that writes a ready pair folder at `out`. The builders register themselves
# through the room's front door (models/pairs/__init__.py); the store never imports them.
Builder = Callable[[Path, int], None]
_BUILDERS: dict[str, Builder] = {}


def register_builder(pair_id: str, builder: Builder) -> None:
    """Teach `ensure_pair` how to build the pair `pair_id` when it is missing."""
    _BUILDERS[pair_id] = builder


def ensure_pair(root: Path, pair_id: str, seed: int = 0) -> Pair:
    """The pair `pair_id` under root, built first if it is missing."""
    store = PairStore(root)
    if pair_id in store.ids():
        return store.get(pair_id)
    if pair_id not in _BUILDERS:
        raise NotFoundError(f"no recipe to build pair {pair_id!r}; known: {', '.join(sorted(_BUILDERS))}")
    with locked(Path(root) / f".{pair_id}.lock"):
        if pair_id not in store.ids():
            _BUILDERS[pair_id](Path(root) / pair_id, seed)
    return store.get(pair_id)
