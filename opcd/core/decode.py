"""Greedy decoding that stops each row at its EOS.

Hugging Face `generate` keeps every row of a batch in the forward pass until the last one ends, so one long answer
makes the whole batch pay for its tokens. Here a row leaves the batch (and the key/value cache) as soon as it
produces an EOS, so a step costs only the rows still writing. Prompts are left-padded as `generate` pads them, with
position ids from the attention mask, so each row's tokens are those `generate` would pick (greedy decoding has no
randomness to keep in step).
"""

from __future__ import annotations

import torch

from opcd.core.scoring import cache_kwarg, model_device


@torch.no_grad()
def greedy(
    model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], pad_id: int
) -> list[tuple[list[int], bool]]:
    """One (response ids, finished) per prompt: the argmax token at every position, up to and including the first
    EOS (finished) or `max_new_tokens` tokens (not finished)."""
    from transformers import DynamicCache

    device = model_device(model)
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    rows = torch.arange(len(prompts), device=device)  # which prompt each batch row answers
    out: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    eos = torch.tensor(sorted(eos_ids), device=device)
    for step in range(max_new_tokens):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, **cache_kwarg(model, cache)
        ).logits[:, -1]
        tokens = logits.argmax(-1)
        ended = torch.isin(tokens, eos)
        for row, token, end in zip(rows.tolist(), tokens.tolist(), ended.tolist(), strict=True):
            out[row].append(token)
            finished[row] = end
        if step == max_new_tokens - 1 or bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, tokens, mask, positions = rows[keep], tokens[keep], mask[keep], positions[keep]
        ids = tokens[:, None]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
    return list(zip(out, finished, strict=True))
