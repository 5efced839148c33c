"""GRADLIFT_DEVICE naming a GPU the machine lacks: chat answers 503 and says why; nothing else breaks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.config import Settings
from tests.app.api.conftest import _api
from tests.conftest import use_settings


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_chat_on_a_missing_gpu_answers_503_with_the_reason(service_env: Settings, toy_pairs_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings = use_settings(monkeypatch, pairs_dir=str(toy_pairs_dir), device="cuda")
    for api in _api(settings):
        body = {"model": "toy-llm", "messages": [{"role": "user", "content": "rol ?: abc #### "}]}
        response = api.client.post("/v1/chat/completions", headers=api.auth(), json=body)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "not_ready" and "torch sees no CUDA GPU" in error["message"]
        assert api.client.get("/v1/models", headers=api.auth()).status_code == 200
