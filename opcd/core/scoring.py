"""Hidden states of the same response under the student's prompt and under the teacher's prompt.

One padding layout everywhere: `[left-padded prompt | right-padded response]`. Every row's response then starts at
the same column P, so the states that predict response token t sit at column P − 1 + t for all rows, and only those
R columns ever reach the vocabulary head (the full-sequence logits are never built). Position ids are computed from
the attention mask, so left padding does not shift positions.

Teacher context cache: when many teacher prompts start with the same context (a system prompt, an experience block),
the teacher's keys/values for that shared prefix are computed once (`PrefixCache`) and each batch is scored as
`[shared prefix (cached) | left-padded rest of prompt | right-padded response]`. For a frozen teacher the cache lives
for the whole run, so a 2,000-token context is read once instead of once per sample.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PrefixKV:
    """A teacher's keys/values for a prompt prefix shared by many rows (batch dimension 1)."""

    ids: tuple[int, ...]
    layers: list[tuple[Tensor, Tensor]]  # per layer: keys, values [1, heads, len(ids), head_dim]


@dataclass
class Batch:
    """Token ids of B (prompt, response) pairs in the shared layout."""

    input_ids: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]
    prompt_width: int  # P
    response_ids: Tensor  # [B, R], padding positions hold 0 (masked)
    response_mask: Tensor  # [B, R]
    prefix: PrefixKV | None = None  # cached keys/values that precede every row (the prompts are then the rest)

    def full_attention_mask(self) -> Tensor:
        if self.prefix is None:
            return self.attention_mask
        ones = self.attention_mask.new_ones(self.attention_mask.shape[0], len(self.prefix.ids))
        return torch.cat([ones, self.attention_mask], dim=1)

    def to(self, device) -> Batch:
        """The same batch with its tensors on `device` (the cached prefix stays where its model is)."""
        names = ("input_ids", "attention_mask", "response_ids", "response_mask")
        move = {k: getattr(self, k).to(device) for k in names}
        return Batch(**move, prompt_width=self.prompt_width, prefix=self.prefix)

    @property
    def position_ids(self) -> Tensor:
        full = self.full_attention_mask()
        return (full.cumsum(-1) - 1).clamp(min=0)[:, full.shape[1] - self.attention_mask.shape[1] :]


def pad_responses(responses: list[list[int]], width: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-padded response ids (padding holds 0) and their boolean mask, `[B, width]` (default: the longest)."""
    width = width or max(1, max(len(r) for r in responses))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in responses])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses], dtype=torch.bool)
    return ids, mask


def make_batch(
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
    prefix: PrefixKV | None = None,
    response_width: int | None = None,
) -> Batch:
    """Pad in exactly one place. `pad_id` only fills masked slots; masks come from lengths, not from ids.

    With a `prefix`, each prompt must start with `prefix.ids`; the batch then holds only the rest of each prompt."""
    if prefix is not None:
        n = len(prefix.ids)
        assert all(tuple(p[:n]) == prefix.ids and len(p) > n for p in prompts), "prompt does not extend the prefix"
        prompts = [p[n:] for p in prompts]
    width = max(len(p) for p in prompts)
    response_ids, response_mask = pad_responses(responses, response_width)
    resp_width = response_ids.shape[1]
    rows, masks = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        left, right = width - len(prompt), resp_width - len(response)
        rows.append([pad_id] * left + prompt + response + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
    return Batch(
        input_ids=torch.tensor(rows),
        attention_mask=torch.tensor(masks),
        prompt_width=width,
        response_ids=response_ids,
        response_mask=response_mask,
        prefix=prefix,
    )


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def decoder_of(model):
    """The transformer body (everything before the vocabulary head), also through a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def _expanded_cache(model, prefix: PrefixKV, rows: int):
    from transformers import DynamicCache

    layers = [(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in prefix.layers]
    return DynamicCache(ddp_cache_data=layers, config=model.config)


def cache_kwarg(decoder, cache) -> dict:
    """transformers renamed `past_key_values` to `cache` in 5.2x; speak whichever this version takes."""
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": cache is not None}


def response_hidden(model, batch: Batch) -> Tensor:
    """Final hidden states that predict each response token, [B, R, H]."""
    batch = batch.to(model_device(model))
    cache = None if batch.prefix is None else _expanded_cache(model, batch.prefix, batch.input_ids.shape[0])
    decoder = decoder_of(model)
    out = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.full_attention_mask(),
        position_ids=batch.position_ids,
        **cache_kwarg(decoder, cache),
    )
    start = batch.prompt_width - 1
    return out.last_hidden_state[:, start : start + batch.response_ids.shape[1]].contiguous()


def response_logits_whole(model, batch: Batch) -> Tensor:
    """Logits that predict each response token, [B, R, V], through the model's own forward (no prefix cache).

    For models whose submodules cannot be called on their own (FSDP: the root's hooks gather the embeddings and the
    head). Only the last R + 1 columns reach the head; the last of them predicts past the response and is dropped."""
    assert batch.prefix is None
    batch = batch.to(model_device(model))
    width = batch.response_ids.shape[1]
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=width + 1,
        use_cache=False,
    )
    return out.logits[:, :width]


def response_logits(model, batch: Batch) -> Tensor:
    """Logits that predict each response token, [B, R, V] (for tests and small batches)."""
    return model.get_output_embeddings()(response_hidden(model, batch))


@torch.no_grad()
def response_logprobs(model, batch: Batch, temperature: float = 1.0) -> Tensor:
    """log p(y_t | prompt, y_<t) of each response token, [B, R] (padding positions are meaningless)."""
    logits = response_logits(model, batch).float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def compute_prefix(model, ids: tuple[int, ...]) -> PrefixKV:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    decoder = decoder_of(model)
    decoder(input_ids=torch.tensor([ids], device=model_device(model)), **cache_kwarg(decoder, cache))
    return PrefixKV(ids, [(layer.keys, layer.values) for layer in cache.layers])


class PrefixCache:
    """Keys/values of shared prompt prefixes, newest `capacity` kept. Only for teachers whose weights never change."""

    def __init__(self, capacity: int = 16, min_tokens: int = 32):
        self.capacity = capacity
        self.min_tokens = min_tokens
        self.entries: OrderedDict[tuple[int, ...], PrefixKV] = OrderedDict()

    def get(self, model, ids: tuple[int, ...]) -> PrefixKV:
        if ids in self.entries:
            self.entries.move_to_end(ids)
            return self.entries[ids]
        entry = self.entries[ids] = compute_prefix(model, ids)
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return entry


def grouped_hidden(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    prefix_lens: list[int],
    pad_id: int,
    cache: PrefixCache | None,
) -> Tensor:
    """Response hidden states [B, R, H], scoring rows that share a cacheable prefix on top of its cached keys/values.

    Rows are grouped by their prefix (in practice: by context); each group is one forward pass; rows come back in
    their original order, padded to the same response width."""
    width = max(1, max(len(r) for r in responses))
    groups: dict[tuple[int, ...], list[int]] = {}
    for row, (prompt, n) in enumerate(zip(prompts, prefix_lens, strict=True)):
        use = cache is not None and n >= cache.min_tokens and n < len(prompt)
        groups.setdefault(tuple(prompt[:n]) if use else (), []).append(row)
    out = None
    for ids, rows in groups.items():
        group_prompts, group_responses = [prompts[r] for r in rows], [responses[r] for r in rows]
        if ids and model.config._attn_implementation == "sdpa":
            hidden = packed_hidden(model, cache.get(model, ids), group_prompts, group_responses, width)
        else:
            prefix = cache.get(model, ids) if ids else None
            hidden = response_hidden(model, make_batch(group_prompts, group_responses, pad_id, prefix, width))
        if out is None:
            out = hidden.new_zeros(len(prompts), width, hidden.shape[-1])
        out[rows] = hidden
    return out


def packed_hidden(model, prefix: PrefixKV, prompts: list[list[int]], responses: list[list[int]], width: int) -> Tensor:
    """Score rows that share a cached prefix as ONE packed sequence on top of the prefix's keys/values.

    Expanding the prefix cache to B rows would copy it B times in every layer (and again for grouped-query heads);
    instead the rows' remaining tokens are laid end to end after the prefix, and a block mask lets each token see the
    prefix, and the earlier tokens of its own row only. Positions continue from the prefix in every row."""
    n, device = len(prefix.ids), model_device(model)
    rows = [p[n:] + r for p, r in zip(prompts, responses, strict=True)]
    total = sum(map(len, rows))
    segment = torch.cat([torch.full((len(row),), i) for i, row in enumerate(rows)])
    offset = torch.cat([torch.arange(len(row)) for row in rows])
    own = (segment[:, None] == segment[None, :]) & (offset[:, None] >= offset[None, :])
    mask = torch.cat([torch.ones(total, n, dtype=torch.bool), own], dim=1)[None, None]  # [1, 1, Q, n + Q]
    decoder = decoder_of(model)
    out = decoder(
        input_ids=torch.tensor([[tok for row in rows for tok in row]], device=device),
        attention_mask=mask.to(device),
        position_ids=(offset + n)[None].to(device),
        **cache_kwarg(decoder, _expanded_cache(model, prefix, 1)),
    ).last_hidden_state[0]
    # the state predicting response token t of row i sits just before it: row start + len(prompt rest) - 1 + t
    starts = torch.tensor([0, *torch.tensor([len(r) for r in rows]).cumsum(0)[:-1].tolist()])
    index = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        index[i, : len(r)] = starts[i] + len(p) - n - 1 + torch.arange(len(r))
    return out[index.to(device)]
