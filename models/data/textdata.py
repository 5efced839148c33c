"""Examples to tensors: one place for how prompts and answers become model inputs and labels.

Plain-text models see `prompt + answer + eos`; models with a chat template see the prompt as a user
turn (or a conversation's turns) and the answer as the assistant's reply. Loss falls on the answer and
the end token only. Examples come from the procedural tasks or from an organization's data file
(`models.data.datafile`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from models.data.datafile import Conversation, Prompt, TrainingExample

IGNORE = -100


def uses_chat(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids the model is given before it answers."""
    if uses_chat(tokenizer):
        return _chat_ids(tokenizer, [{"role": "user", "content": prompt}])
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def example_prompt_ids(tokenizer: PreTrainedTokenizerBase, example: TrainingExample) -> list[int]:
    """Token ids before the answer of a task example or a conversation."""
    if isinstance(example, Conversation) and uses_chat(tokenizer):
        return _chat_ids(tokenizer, example.messages())
    return prompt_ids(tokenizer, example.prompt)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_batch(tokenizer: PreTrainedTokenizerBase,
                 examples: list[TrainingExample]) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (prompt and padding masked out)."""
    if uses_chat(tokenizer):
        prompts = [example_prompt_ids(tokenizer, ex) for ex in examples]
    else:  # one call into the Rust tokenizer for the whole batch: per-example calls dominated small models' steps
        prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([ex.answer for ex in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for p, a in zip(prompts, answers, strict=True):
        a = a + [tokenizer.eos_token_id]
        rows.append((p + a, [IGNORE] * len(p) + a))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def encode_prompts(tokenizer: PreTrainedTokenizerBase,
                   prompts: list[Prompt] | list[TrainingExample]) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation: plain text, task examples or conversations (every turn
    before the reply)."""
    rows = [prompt_ids(tokenizer, p) if isinstance(p, str) else example_prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
