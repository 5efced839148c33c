"""Maps from TinyLM update to LLM update that see the same inputs as the Gradient Transformer."""

from __future__ import annotations

import torch

from models.training.shadow import ShadowSet


def mean_update(data: ShadowSet) -> torch.Tensor:
    """The average shadow LLM update [L_T, D_T]: what a provider gets without reading the upload."""
    return data.tgt.mean(0)


def nearest(data: ShadowSet, src: torch.Tensor) -> torch.Tensor:
    """The LLM update of the shadow pair whose TinyLM update is closest in cosine to `src` [L_S, D_S]."""
    flat = data.src.flatten(1)
    sims = torch.nn.functional.cosine_similarity(flat, src.flatten()[None], dim=1)
    return data.tgt[int(sims.argmax())]


class Ridge:
    """Kernel (dual) ridge regression on standardised, flattened updates.

    The full primal map would be (L_S*D_S) x (L_T*D_T) weights, too large for real models; the dual
    form needs an N x N system for N training pairs and gives the same predictions.
    """

    def __init__(self, data: ShadowSet, alpha: float = 1.0):
        x = data.src.flatten(1).double()
        self.x_mean, self.x_std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-12)
        self.x = (x - self.x_mean) / self.x_std
        y = data.tgt.flatten(1).double()
        self.y_mean = y.mean(0)
        self.shape = data.tgt.shape[1:]
        gram = self.x @ self.x.T
        lam = alpha * gram.diagonal().mean()  # scale-free strength
        self.coef = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), y - self.y_mean)

    def predict(self, src: torch.Tensor) -> torch.Tensor:
        x = (src.flatten().double() - self.x_mean) / self.x_std
        return (self.y_mean + (self.x @ x) @ self.coef).float().reshape(self.shape)
