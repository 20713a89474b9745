"""The teacher context cache: scoring on top of cached prefix keys/values equals scoring the whole prompt."""

from __future__ import annotations

import pytest
import torch

from opcd.config import DataConfig
from opcd.core.prompts import PromptRenderer
from opcd.core.scoring import PrefixCache, grouped_hidden

from .conftest import make_tiny_model

LONG_CONTEXT = "You are a careful assistant. " * 20 + "Always answer in French."


def _rows(tokenizer, data: DataConfig | None = None):
    renderer = PromptRenderer(tokenizer, data or DataConfig())
    rows = [
        ([{"role": "user", "content": "What is the capital of Italy?"}], LONG_CONTEXT),
        ([{"role": "user", "content": "Hi"}], LONG_CONTEXT),
        ([{"role": "user", "content": "Name a painter, please, and explain why."}], "Start with 'Arr!'. " * 10),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], LONG_CONTEXT),
    ]
    pairs = [renderer.render(m, c) for m, c in rows]
    responses = [[5, 6, 7], [9], [11, 12, 13, 14, 15], [3, 4]]
    return pairs, responses


def _logprobs(model, hidden, responses):
    logp = torch.log_softmax(model.get_output_embeddings()(hidden).float(), -1)
    return [logp[i, : len(r)].gather(-1, torch.tensor(r).unsqueeze(-1)).squeeze(-1) for i, r in enumerate(responses)]


@pytest.mark.parametrize("which", ["smol", "qwen"])
@pytest.mark.parametrize("placement", ["system", "user"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # sdpa: packed rows; eager: the cache expanded per row
def test_cached_prefix_scores_equal_uncached(tmp_path, smol_tokenizer, qwen_tokenizer, which, placement, attention):
    from transformers import AutoModelForCausalLM

    tokenizer = {"smol": smol_tokenizer, "qwen": qwen_tokenizer}[which]
    path = make_tiny_model(tmp_path / "m", tokenizer)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    pairs, responses = _rows(tokenizer, DataConfig(placement=placement))
    prompts, lens = [p.teacher_ids for p in pairs], [p.teacher_prefix for p in pairs]
    assert lens[0] == lens[1] > 50  # the shared context is recognised as a prefix
    cache = PrefixCache(min_tokens=8)
    with torch.no_grad():
        plain = grouped_hidden(model, prompts, responses, lens, tokenizer.pad_token_id, None)
        cached = grouped_hidden(model, prompts, responses, lens, tokenizer.pad_token_id, cache)
        again = grouped_hidden(model, prompts, responses, lens, tokenizer.pad_token_id, cache)  # served from cache
    assert len(cache.entries) >= 2  # one per distinct context prefix
    for a, b, c in zip(
        _logprobs(model, plain, responses),
        _logprobs(model, cached, responses),
        _logprobs(model, again, responses),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, c)


def test_cached_prefix_on_real_model_in_bf16(smol_tokenizer):
    """The packaged SmolLM2 in bf16: cached and uncached teacher log-probs agree within bf16 rounding."""
    from opcd.core import models

    model = models.load_model("smollm2-135m-instruct", "bf16").eval()
    pairs, responses = _rows(smol_tokenizer)
    prompts, lens = [p.teacher_ids for p in pairs], [p.teacher_prefix for p in pairs]
    with torch.no_grad():
        plain = grouped_hidden(model, prompts, responses, lens, smol_tokenizer.pad_token_id, None)
        cached = grouped_hidden(model, prompts, responses, lens, smol_tokenizer.pad_token_id, PrefixCache())
    for a, b in zip(_logprobs(model, plain, responses), _logprobs(model, cached, responses), strict=True):
        torch.testing.assert_close(a, b, atol=0.15, rtol=0.05)


def test_cache_is_bounded(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    cache = PrefixCache(capacity=2)
    for ids in [(1, 2, 3), (4, 5, 6), (1, 2, 3), (7, 8, 9)]:
        entry = cache.get(model, ids)
        assert entry.ids == ids and entry.layers[0][0].shape[2] == 3
    assert list(cache.entries) == [(1, 2, 3), (7, 8, 9)]  # (4, 5, 6) was the least recently used
