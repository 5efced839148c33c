"""The Gradient Transformer: an encoder-decoder that reads a TinyLM update and writes an LLM update.

Read top to bottom: the config, the blocks, then the model with `forward` (teacher forcing, returns
prediction and loss) and a no-grad `generate` (autoregressive over LLM layers, with a key/value cache).

Input:  the TinyLM update as layer tokens  [B, L_S, D_S]  (one token per TinyLM layer)
Output: the LLM update as layer tokens     [B, L_T, D_T]  (one token per LLM layer)

Beyond the paper's network (three linear maps around a transformer):
- per-coordinate standardisation of inputs and targets, statistics stored as buffers (raw deltas are
  1e-4..1e-2, and the paper warns of sensitivity to the learning rate);
- a learned start token, the same in training and generation (the reference uses zeros at inference);
- learned layer-index embeddings for source and target tokens (the reference has none);
- a key/value cache in `generate` (the reference re-runs the whole network per LLM layer);
- optionally (`prototypes`), a start from the shadow updates nearest the input. The untrained model outputs
  the mean training update; a routed one outputs prototype LLM updates (one per shadow run, or one per task:
  the mean of its runs) weighted by a softmax over the cosine of the (standardised) input to each
  prototype's TinyLM update, at a learned temperature, and the network learns what to add.
  Why: one GT for several tasks must write each task's update, but the linear head keeps every output in
  one d_model-dimensional subspace (plus the mean). On the smol pair's shadow data 128 dimensions hold
  99.8% of one task's standardised variance but 64% of four tasks' (PCA), so the paper's GT cannot fit
  them; and with 3-4 shadow runs per task a wider network fits the training runs but not held-out ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ConfigError


@dataclass(frozen=True)
class GTArch:
    """The network's own size, whatever the pair: what a training recipe chooses."""

    d_model: int = 128
    n_heads: int = 4
    n_enc: int = 2
    n_dec: int = 2
    d_ff: int = 512
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if min(self.d_model, self.n_heads, self.n_enc, self.n_dec, self.d_ff) < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(f"every size must be positive and dropout in [0, 1): {self}")


@dataclass(frozen=True)
class GTConfig:
    """A network for one pair: the shapes of its layer tokens, its architecture, its routing."""

    src_layers: int  # L_S
    src_dim: int  # D_S
    tgt_layers: int  # L_T
    tgt_dim: int  # D_T
    arch: GTArch = GTArch()
    prototypes: int = 0  # 0: none (the paper); n: start from n prototype updates (runs or tasks; module doc)

    def __post_init__(self) -> None:
        if min(self.src_layers, self.src_dim, self.tgt_layers, self.tgt_dim) < 1:
            raise ConfigError(f"every size must be positive: {self}")
        if self.prototypes < 0:
            raise ConfigError(f"prototypes must be 0 (off) or positive, not {self.prototypes}")

    def to_dict(self) -> dict:
        """Flat, as checkpoints store it: the shapes, the architecture's fields, prototypes."""
        flat = asdict(self)
        return {**flat.pop("arch"), **flat}

    @classmethod
    def from_dict(cls, data: dict) -> GTConfig:
        arch_fields = {f.name for f in fields(GTArch)}
        arch = GTArch(**{k: v for k, v in data.items() if k in arch_fields})
        return cls(**{k: v for k, v in data.items() if k not in arch_fields}, arch=arch)


class Attention(nn.Module):
    """Multi-head attention; `cache` holds the keys and values of earlier positions when decoding."""

    def __init__(self, arch: GTArch):
        super().__init__()
        self.n_heads = arch.n_heads
        self.q = nn.Linear(arch.d_model, arch.d_model)
        self.kv = nn.Linear(arch.d_model, 2 * arch.d_model)
        self.out = nn.Linear(arch.d_model, arch.d_model)
        self.dropout = arch.dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # [B, H, T, d/H]

    def forward(self, x: torch.Tensor, context: torch.Tensor, causal: bool = False,
                cache: dict | None = None) -> torch.Tensor:
        q = self._heads(self.q(x))
        if cache is not None and "k" in cache and cache.get("static"):
            k, v = cache["k"], cache["v"]  # cross-attention: memory projected once
        else:
            k, v = (self._heads(t) for t in self.kv(context).chunk(2, dim=-1))
            if cache is not None:
                if "k" in cache:  # self-attention: append this step to the past
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        # With a cache, the one new query may see every cached position: no mask needed.
        is_causal = causal and q.shape[2] > 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))


class MLP(nn.Module):
    def __init__(self, arch: GTArch):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(arch.d_model, arch.d_ff), nn.GELU(), nn.Linear(arch.d_ff, arch.d_model),
                                 nn.Dropout(arch.dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderBlock(nn.Module):
    def __init__(self, arch: GTArch):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(arch.d_model), Attention(arch)
        self.ln2, self.mlp = nn.LayerNorm(arch.d_model), MLP(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, arch: GTArch):
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(arch.d_model), Attention(arch)
        self.ln2, self.cross_attn = nn.LayerNorm(arch.d_model), Attention(arch)
        self.ln3, self.mlp = nn.LayerNorm(arch.d_model), MLP(arch)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.self_attn(h, h, causal=True, cache=None if cache is None else cache["self"])
        x = x + self.cross_attn(self.ln2(x), memory, cache=None if cache is None else cache["cross"])
        return x + self.mlp(self.ln3(x))


class GradientTransformer(nn.Module):
    def __init__(self, cfg: GTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.arch.d_model
        self.src_in = nn.Linear(cfg.src_dim, d)  # D_S -> d_model
        self.tgt_in = nn.Linear(cfg.tgt_dim, d)  # D_T -> d_model (earlier outputs fed back)
        self.head = nn.Linear(d, cfg.tgt_dim)  # d_model -> D_T
        self.src_layer = nn.Embedding(cfg.src_layers, d)
        self.tgt_layer = nn.Embedding(cfg.tgt_layers, d)
        self.start = nn.Parameter(torch.zeros(d))
        self.encoder = nn.ModuleList(EncoderBlock(cfg.arch) for _ in range(cfg.arch.n_enc))
        self.decoder = nn.ModuleList(DecoderBlock(cfg.arch) for _ in range(cfg.arch.n_dec))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d), nn.LayerNorm(d)
        for name, shape in (("src", (cfg.src_layers, cfg.src_dim)), ("tgt", (cfg.tgt_layers, cfg.tgt_dim))):
            self.register_buffer(f"{name}_mean", torch.zeros(shape))
            self.register_buffer(f"{name}_std", torch.ones(shape))
        p = cfg.prototypes
        self.register_buffer("proto_src", torch.zeros(p, cfg.src_layers * cfg.src_dim))  # standardised means
        self.register_buffer("proto_tgt", torch.zeros(p, cfg.tgt_layers, cfg.tgt_dim))  # standardised means
        self.log_temperature = nn.Parameter(torch.tensor(math.log(30.0))) if p else None
        self.apply(self._init)
        nn.init.normal_(self.start, std=0.02)
        # A zero head makes the untrained model output the mean training update exactly: training starts
        # from the strongest input-blind baseline and has to beat it on validation to move away.
        nn.init.zeros_(self.head.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def set_statistics(self, src: torch.Tensor, tgt: torch.Tensor, floor: float = 1e-8) -> None:
        """Per-coordinate mean and std from training pairs: src [N, L_S, D_S], tgt [N, L_T, D_T]."""
        for name, x in (("src", src), ("tgt", tgt)):
            getattr(self, f"{name}_mean").copy_(x.mean(0))
            getattr(self, f"{name}_std").copy_(x.std(0, unbiased=False).clamp_min(floor))

    @torch.no_grad()
    def set_prototypes(self, src: torch.Tensor, tgt: torch.Tensor, groups: list) -> None:
        """Per-group means of the standardised training pairs (after `set_statistics`); a group is a
        shadow run (its snapshots) or a task (its runs' snapshots)."""
        names = sorted(set(groups))
        if len(names) != self.cfg.prototypes:
            raise ConfigError(f"the model has {self.cfg.prototypes} prototypes; the data has {len(names)} groups")
        x, y = self.standardise_source(src).flatten(1), self.normalise_target(tgt)
        for i, name in enumerate(names):
            rows = [j for j, g in enumerate(groups) if g == name]
            self.proto_src[i], self.proto_tgt[i] = x[rows].mean(0), y[rows].mean(0)

    def anchor(self, src: torch.Tensor) -> torch.Tensor:
        """Where the output starts, standardised [B, L_T, D_T]: zero (the mean update), or the
        prototypes' LLM updates weighted by a softmax over the cosine of the input to their TinyLM updates."""
        b = src.shape[0]
        if not self.cfg.prototypes:
            return torch.zeros(b, self.cfg.tgt_layers, self.cfg.tgt_dim, device=src.device)
        sims = F.cosine_similarity(self.standardise_source(src).flatten(1)[:, None], self.proto_src[None], dim=2)
        weights = torch.softmax(self.log_temperature.exp() * sims, dim=1)  # [B, P]
        return torch.einsum("bp,pld->bld", weights, self.proto_tgt)

    def standardise_source(self, src: torch.Tensor) -> torch.Tensor:
        return (src - self.src_mean) / self.src_std

    def normalise_target(self, tgt: torch.Tensor) -> torch.Tensor:
        return (tgt - self.tgt_mean) / self.tgt_std

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        x = self.src_in(self.standardise_source(src)) + self.src_layer.weight  # [B, L_S, d]
        for block in self.encoder:
            x = block(x)
        return self.ln_enc(x)

    def _decoder_inputs(self, tgt_norm: torch.Tensor) -> torch.Tensor:
        """Targets shifted right behind the start token, plus target layer ids: [B, L, d]."""
        b, n, _ = tgt_norm.shape
        shifted = torch.cat([self.start.expand(b, 1, -1), self.tgt_in(tgt_norm[:, :-1])], dim=1)
        return shifted + self.tgt_layer.weight[:n]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor | None = None):
        """Teacher forcing. Returns (prediction in standardised units [B, L_T, D_T], MSE loss or None)."""
        memory = self.encode(src)
        if tgt is None:
            raise ValueError("forward needs targets; use generate() without them")
        tgt_norm = self.normalise_target(tgt)
        x = self._decoder_inputs(tgt_norm)
        for block in self.decoder:
            x = block(x, memory)
        pred = self.head(self.ln_dec(x)) + self.anchor(src)
        return pred, F.mse_loss(pred, tgt_norm)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, use_cache: bool = True, normalised: bool = False) -> torch.Tensor:
        """Autoregressive decoding of all L_T layer tokens; returns raw updates [B, L_T, D_T]."""
        memory = self.encode(src)
        anchor = self.anchor(src)
        b = src.shape[0]
        caches = [{"self": {}, "cross": {"static": False}} for _ in self.decoder] if use_cache else None
        outputs: list[torch.Tensor] = []  # standardised, one [B, D_T] per LLM layer
        for j in range(self.cfg.tgt_layers):
            if use_cache:
                prev = self.start.expand(b, -1) if j == 0 else self.tgt_in(outputs[-1])
                x = (prev + self.tgt_layer.weight[j]).unsqueeze(1)  # [B, 1, d]: only the new position
                for block, cache in zip(self.decoder, caches, strict=True):
                    x = block(x, memory, cache)
                    cache["cross"]["static"] = True
            else:
                so_far = torch.stack(outputs + [torch.zeros_like(self.tgt_mean[0]).expand(b, -1)], dim=1)
                x = self._decoder_inputs(so_far)  # the last row is only ever shifted out
                for block in self.decoder:
                    x = block(x, memory)
            outputs.append(self.head(self.ln_dec(x[:, -1])) + anchor[:, j])
        pred = torch.stack(outputs, dim=1)  # [B, L_T, D_T]
        return pred if normalised else pred * self.tgt_std + self.tgt_mean

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

