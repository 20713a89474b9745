"""Greedy decoding that drops rows at their EOS gives exactly what HF `generate` gives."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from opcd.config import RolloutConfig
from opcd.core import decode
from opcd.core.rollout import HFSampler, cut_at_eos

PROMPTS = [[5, 17, 300, 42], [9, 8, 7], [100, 200, 300, 400, 500, 600], [11], [1000, 2, 3, 4]]


def _hf_greedy(model, prompts, max_new_tokens, eos_ids, pad_id):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=sorted(eos_ids), pad_token_id=pad_id
    )
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [cut_at_eos(row[width:].tolist(), eos_ids) for row in out]


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def test_rows_that_end_early_leave_the_batch_and_the_rest_are_unchanged(model):
    # EOS ids taken from what the rows write without any, so that rows end at different steps
    free = _hf_greedy(model, PROMPTS, 12, {-1}, 0)
    eos = {free[0][0][3], free[2][0][6]}
    ours = decode.greedy(model, PROMPTS, 12, eos, 0)
    theirs = _hf_greedy(model, PROMPTS, 12, eos, 0)
    assert ours == theirs
    assert {done for _, done in ours} == {True, False}, "the EOS choice should end some rows and not others"
    assert len({len(r) for r, _ in ours}) > 1


def test_sampler_uses_it_for_greedy_rollouts(model, smol_tokenizer):
    sampler = HFSampler(model, RolloutConfig.greedy(10), {smol_tokenizer.eos_token_id}, 0, "fp32")
    assert sampler.greedy
    assert sampler.generate(PROMPTS, seed=0) == _hf_greedy(model, PROMPTS, 10, {smol_tokenizer.eos_token_id}, 0)
    assert not HFSampler(model, RolloutConfig(max_new_tokens=10), {2}, 0, "fp32").greedy
