"""Hidden states of the same response under the student's prompt and under the teacher's prompt.

One padding layout everywhere: `[left-padded prompt | right-padded response]`. Every row's response then starts at
the same column P, so the states that predict response token t sit at column P − 1 + t for all rows, and only those
R columns ever reach the vocabulary head (the full-sequence logits are never built). Position ids are computed from
the attention mask, so left padding does not shift positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """Token ids of B (prompt, response) pairs in the shared layout."""

    input_ids: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]
    prompt_width: int  # P
    response_ids: Tensor  # [B, R], padding positions hold 0 (masked)
    response_mask: Tensor  # [B, R]

    @property
    def position_ids(self) -> Tensor:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
    """Pad in exactly one place. `pad_id` only fills masked slots; masks come from lengths, not from ids."""
    width = max(len(p) for p in prompts)
    resp_width = max(1, max(len(r) for r in responses))
    rows, masks, resp, resp_mask = [], [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        left, right = width - len(prompt), resp_width - len(response)
        rows.append([pad_id] * left + prompt + response + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
        resp.append(response + [0] * right)
        resp_mask.append([1] * len(response) + [0] * right)
    return Batch(
        input_ids=torch.tensor(rows),
        attention_mask=torch.tensor(masks),
        prompt_width=width,
        response_ids=torch.tensor(resp),
        response_mask=torch.tensor(resp_mask, dtype=torch.bool),
    )


def decoder_of(model):
    """The transformer body (everything before the vocabulary head), also through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def response_hidden(model, batch: Batch) -> Tensor:
    """Final hidden states that predict each response token, [B, R, H]."""
    out = decoder_of(model)(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    start = batch.prompt_width - 1
    return out.last_hidden_state[:, start : start + batch.response_ids.shape[1]]


def response_logits(model, batch: Batch) -> Tensor:
    """Logits that predict each response token, [B, R, V] (for tests and small batches)."""
    return model.get_output_embeddings()(response_hidden(model, batch))


@torch.no_grad()
def response_logprobs(model, batch: Batch, temperature: float = 1.0) -> Tensor:
    """log p(y_t | prompt, y_<t) of each response token, [B, R] (padding positions are meaningless)."""
    logits = response_logits(model, batch).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
