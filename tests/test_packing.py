"""Packed CPU weights: the same bits as `F.linear`, or the layer is left alone; training never sees them."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from opcd.config import RolloutConfig
from opcd.core import packing
from opcd.core.packing import packed_linears
from opcd.core.rollout import HFSampler


def _bf16_model(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).requires_grad_(False).eval()


def _packs(model) -> int:
    with packed_linears(model) as n:
        return n


@pytest.fixture
def model(tiny_model):
    model = _bf16_model(tiny_model)
    if not _packs(model):
        pytest.skip("this torch or CPU has no bit-exact packed bf16 linear")
    return model


def test_packed_layers_give_the_same_bits_and_are_restored(model):
    x = torch.randint(0, model.config.vocab_size, (3, 9))
    plain = model(input_ids=x).logits
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    with packed_linears(model, rows=3) as n:
        assert n == linears  # every layer, the head included
        packed = model(input_ids=x).logits
    assert torch.equal(plain, packed)
    assert not any("forward" in vars(m) for m in model.modules())  # the class's own forward again


def test_greedy_and_sampled_tokens_are_unchanged(model, smol_tokenizer, monkeypatch):
    prompts = [smol_tokenizer(t).input_ids for t in ("Hello there, how are you?", "Hi", "Name a painter.")]
    eos, pad = {smol_tokenizer.eos_token_id}, smol_tokenizer.pad_token_id
    for rollout in (RolloutConfig(temperature=0, max_new_tokens=10), RolloutConfig(temperature=1.0, max_new_tokens=10)):
        sampler = HFSampler(model, rollout, eos, pad, "bf16")
        packed = sampler.generate(prompts, seed=3)
        monkeypatch.setenv("OPCD_PACKED_LINEAR", "0")
        assert _packs(model) == 0
        assert sampler.generate(prompts, seed=3) == packed
        monkeypatch.delenv("OPCD_PACKED_LINEAR")


def test_fp32_weights_under_bf16_autocast_match_autocasts_linear(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).requires_grad_(False).eval()  # fp32, as in training
    x = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=x).logits
        with packed_linears(model, rows=2) as n:
            packed = model(input_ids=x).logits
    if not n:
        pytest.skip("this torch or CPU has no bit-exact packed bf16 linear")
    assert torch.equal(plain, packed)
    plain32 = model(input_ids=x).logits
    with packed_linears(model):  # fp32 without autocast: the packed bf16 weight does not stand for it
        assert torch.equal(model(input_ids=x).logits, plain32)


def test_a_forward_that_needs_gradients_uses_the_trainable_weight(model):
    model.requires_grad_(True)
    x = torch.randint(0, model.config.vocab_size, (2, 5))
    with packed_linears(model):
        loss = model(input_ids=x).logits.float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.ndim == 2 and p.shape[0] != model.config.vocab_size)


def test_a_shape_whose_packed_call_differs_is_left_alone(model, monkeypatch):
    reorder, linear = packing._ops()

    def off_by_a_bit(x, w, b, *args):
        return linear(x, w, b, *args) * 1.0078125  # one bf16 step above 1

    monkeypatch.setattr(packing, "_ops", lambda: (reorder, off_by_a_bit))
    monkeypatch.setattr(packing, "_VERDICTS", {})
    x = torch.randint(0, model.config.vocab_size, (2, 5))
    plain = model(input_ids=x).logits
    with packed_linears(model) as n:
        assert n == 0
        assert torch.equal(model(input_ids=x).logits, plain)
