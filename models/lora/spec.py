"""The LoRA settings a pair fixes for both of its models (the paper's: r=2, alpha=32, q and v)."""

from __future__ import annotations

from dataclasses import dataclass

from models.errors import ConfigError


@dataclass(frozen=True)
class LoraSpec:
    r: int = 2
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1 or not self.targets:
            raise ConfigError(f"invalid LoRA settings: {self}")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def peft_config(self):  # -> peft.LoraConfig (imported lazily: peft is slow to import)
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), bias="none", task_type="CAUSAL_LM")
