"""OpenAI's penalties and log-probabilities as the sampler applies them, on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from models.serving.sampling import RequestError, SamplingParams, next_token, penalize

NO_EOS = torch.tensor([], dtype=torch.long)


def test_penalties_lower_tokens_already_sampled_as_openai_defines_them() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    params = SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25)
    assert torch.equal(penalize(logits, {}, params), logits)
    # token 0 sampled 3 times: 3 - (0.25 * 3 + 0.5); token 2 once: 1 - (0.25 + 0.5)
    assert torch.allclose(penalize(logits, {0: 3, 2: 1}, params), torch.tensor([1.75, 2.0, 0.25, 0.0]))
    assert torch.equal(penalize(logits, {0: 3}, SamplingParams(temperature=0)), logits)  # zero: unchanged


def test_greedy_decoding_moves_off_a_repeated_token_under_a_penalty() -> None:
    logits = torch.tensor([1.0, 0.6, 0.0])
    plain, counts = SamplingParams(temperature=0), {}
    assert [next_token(logits, NO_EOS, plain, i, None, counts) for i in range(3)] == [0, 0, 0]
    penalised, counts = SamplingParams(temperature=0, frequency_penalty=0.5), {}
    assert [next_token(logits, NO_EOS, penalised, i, None, counts) for i in range(3)] == [0, 1, 0]
    assert counts == {0: 2, 1: 1}


def test_logprobs_are_the_models_distribution_with_the_most_likely_alternatives() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    recorded: list = []
    params = SamplingParams(temperature=0, logprobs=True, top_logprobs=2, frequency_penalty=2)
    token = next_token(logits, NO_EOS, params, 0, None, {0: 1}, recorded)
    assert token == 1  # the penalty moved the choice, not the reported probabilities
    expected = torch.log_softmax(logits, dim=-1)
    (entry,) = recorded
    assert entry.token == 1 and math.isclose(entry.logprob, float(expected[1]), rel_tol=1e-6)
    assert [i for i, _ in entry.top] == [0, 1] and math.isclose(entry.top[0][1], float(expected[0]), rel_tol=1e-6)


@pytest.mark.parametrize("bad", [{"presence_penalty": 2.5}, {"frequency_penalty": -3}, {"top_logprobs": 2},
                                 {"logprobs": True, "top_logprobs": 21}])
def test_out_of_range_values_are_refused(bad: dict) -> None:
    with pytest.raises(RequestError):
        SamplingParams(**bad)
