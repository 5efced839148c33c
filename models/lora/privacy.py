"""Differential privacy for an organization's TinyLM update, the paper's two ways:

- DP-SGD during the fine-tune (`DPConfig`): Poisson-sampled batches, each example's gradient clipped to
  L2 norm `clip`, Gaussian noise calibrated (Opacus, RDP accountant) so that the whole run spends at most
  `epsilon` at `delta`. The guarantee is per example, i.e. per line of the organization's data file.
- Output perturbation (`UpdateNoise`): clip the update vector (all dA, dB as one vector) and add noise
  before it is written: Gaussian std = C·sqrt(2·ln(1.25/delta))/epsilon on the L2-clipped update, or
  Laplace b = C/epsilon. The Laplace mechanism is calibrated to the L1 norm, so its update is clipped in
  L1 (the paper says L2 for both; an L2 bound does not bound the L1 sensitivity in d dimensions).
  Like the paper, the sensitivity is taken to be C.

Randomness: `seed=None` draws sampling and noise from the operating system, as an organization's private
run must (noise that can be regenerated from a recorded seed can be subtracted). A fixed seed is for the
provider's shadow runs on public data and for tests.
"""

from __future__ import annotations

import math
import secrets
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from models.errors import ConfigError
from models.lora.header import strict_json
from models.lora.update import Update

NoiseKind = Literal["gaussian", "laplace"]
ACCOUNTANT = "rdp"  # Opacus's Renyi-DP accountant: the one its noise calibration and the reference use
# Opacus's default orders stop at 63; few steps at a small sample rate are tightest at larger orders.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 256, 8)) + [256, 512, 1024]


def _check_epsilon_delta(epsilon: float, delta: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be a positive number, not {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must lie strictly between 0 and 1, not {delta}")


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded, or from the operating system's randomness when seed is None."""
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings of a fine-tune (the reference: clip 1.0, delta 1e-5)."""

    epsilon: float
    delta: float = 1e-5
    clip: float = 1.0  # per-example gradient L2 norm bound
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_epsilon_delta(self.epsilon, self.delta)
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"the per-example gradient clip must be positive, not {self.clip}")

    def describe(self) -> dict[str, Any]:
        """The settings, without the seed (a private run's randomness is not recorded)."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}

    def noise_multiplier(self, sample_rate: float, steps: int) -> float:
        """Noise std / clip so that `steps` Poisson-sampled steps spend `epsilon` at `delta`."""
        return _noise_multiplier(self.epsilon, self.delta, sample_rate, steps)


@lru_cache(maxsize=64)  # a binary search: 6-14 accountant calls, up to ~1 s; shadow runs ask it again and again
def _noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # The search tries noise levels far above the answer, whose best order lies past ALPHAS.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=ACCOUNTANT, epsilon_tolerance=epsilon / 100,
                                              alphas=ALPHAS))
    except ValueError as exc:  # Opacus gives up above a noise multiplier of 1e6
        raise ConfigError(f"epsilon {epsilon} is out of reach in {steps} steps at sample rate "
                          f"{sample_rate:.3g}: {exc}") from None


def spent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The epsilon that `steps` DP-SGD steps spend at `delta` (RDP accountant)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


@dataclass(frozen=True)
class UpdateNoise:
    """Output perturbation of the update before it leaves the organization."""

    kind: NoiseKind
    epsilon: float
    clip: float  # the update's norm bound: L2 for gaussian, L1 for laplace
    delta: float = 1e-5  # gaussian only
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "laplace"):
            raise ConfigError(f"update noise is gaussian or laplace, not {self.kind!r}")
        _check_epsilon_delta(self.epsilon, self.delta)
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"the update's clip norm must be positive, not {self.clip}")

    @property
    def norm_order(self) -> int:
        return 2 if self.kind == "gaussian" else 1

    @property
    def scale(self) -> float:
        """Gaussian: the noise's standard deviation; Laplace: its scale b (std = b·sqrt(2))."""
        if self.kind == "gaussian":
            return self.clip * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon
        return self.clip / self.epsilon

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "epsilon": self.epsilon, "clip": self.clip, "clip_norm": f"L{self.norm_order}",
               "scale": self.scale}
        return out | ({"delta": self.delta} if self.kind == "gaussian" else {})

    def apply(self, update: Update) -> Update:
        """The update clipped to norm `clip` (as one vector), plus noise of `scale` on every element."""
        names = sorted(update)
        flat = torch.cat([update[n].float().reshape(-1) for n in names])
        flat = clip_norm(flat, self.clip, self.norm_order)
        gen = generator(self.seed)
        if self.kind == "gaussian":
            noise = torch.randn(flat.shape, generator=gen) * self.scale
        else:  # Laplace(0, b) as the difference of two exponentials of mean b
            noise = (torch.empty(flat.shape).exponential_(generator=gen)
                     - torch.empty(flat.shape).exponential_(generator=gen)) * self.scale
        flat = flat + noise
        out, offset = {}, 0
        for n in names:
            size = update[n].numel()
            out[n] = flat[offset:offset + size].reshape(update[n].shape).contiguous()
            offset += size
        return out


def clip_norm(vector: torch.Tensor, bound: float, order: int) -> torch.Tensor:
    """`vector` scaled down to norm `bound` if its norm is larger."""
    norm = torch.linalg.vector_norm(vector, ord=order)
    return vector * (bound / norm) if norm > bound else vector


# ---- matching an upload's privacy to a GT's shadow runs ----

MISMATCH = 10.0  # distance between different mechanisms (or none and one): worse than any epsilon gap here


def adapter_privacy(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The privacy settings `gradlift finetune` recorded in an adapter file's metadata (None: none recorded,
    or a plain run). ConfigError if the record is there but unreadable: not JSON, nested deeper than the
    record is, a mechanism whose settings are not plain values, an epsilon that is not a positive finite
    number. What is returned is stored and shown back, so nothing else gets through."""
    if "gradlift" not in metadata:
        return None
    try:
        record = strict_json(metadata["gradlift"], max_depth=RECORD_DEPTH)
    except ValueError as exc:
        raise ConfigError(f"the adapter's `gradlift` metadata is not JSON: {exc}") from None
    privacy = record.get("privacy") if isinstance(record, dict) else None
    if privacy is None:
        return None
    mechanisms = {k: v for k, v in privacy.items() if v} if isinstance(privacy, dict) else None
    if mechanisms is None or any(k not in ("dp_sgd", "update_noise") or not _epsilon(v)
                                 for k, v in mechanisms.items()):
        raise ConfigError("the adapter's `gradlift` metadata has a `privacy` entry without an epsilon per mechanism")
    if not all(_plain(value) for settings in mechanisms.values() for value in settings.values()):
        raise ConfigError("the adapter's `gradlift` privacy settings hold something other than numbers and words")
    return mechanisms or None


RECORD_DEPTH = 4  # {"privacy": {"dp_sgd": {"epsilon": ...}}} and lists of sources: no record nests deeper
_MAX_WORD = 200


def _plain(value: object) -> bool:
    """A setting's value as the fine-tune writes them: a finite number, a short string, a flag or null."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, bool | int) or (isinstance(value, str) and len(value) <= _MAX_WORD)


def _epsilon(settings: object) -> float | None:
    value = settings.get("epsilon") if isinstance(settings, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def privacy_distance(upload: dict[str, Any] | None, shadow: dict[str, Any] | None) -> float:
    """How far a GT's shadow-run privacy is from an upload's: 0 for the same mechanisms at the same
    epsilons; |ln eps - ln eps'| per shared mechanism; MISMATCH per mechanism only one side has."""
    a = {k: v for k, v in (upload or {}).items() if v}
    b = {k: v for k, v in (shadow or {}).items() if v}
    distance = MISMATCH * len(a.keys() ^ b.keys())
    for mechanism in a.keys() & b.keys():
        ea, eb = _epsilon(a[mechanism]), _epsilon(b[mechanism])
        kinds_differ = a[mechanism].get("kind") != b[mechanism].get("kind")
        distance += MISMATCH * kinds_differ + (abs(math.log(ea / eb)) if ea and eb else MISMATCH)
    return distance


def noisiest(privacies: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The most private of several uploads' settings (pooled upgrades): the GT is matched to it."""
    def strength(p: dict[str, Any] | None) -> tuple[int, float]:
        epsilons = [e for v in (p or {}).values() if (e := _epsilon(v))]
        return len(epsilons), -min(epsilons, default=math.inf)

    return max(privacies, key=strength, default=None)
