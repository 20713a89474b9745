"""The vLLM rollout path up to the engine call: settings, weights handed over, outputs read back, clear refusals."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from opcd.cli import main
from opcd.config import RolloutConfig, load_config, validate
from opcd.core import models
from opcd.core.rollout import HFSampler
from opcd.core.vllm_sampler import engine_weights, parse_output, require_vllm, sampling_kwargs
from opcd.errors import OpcdError

NO_VLLM = importlib.util.find_spec("vllm") is None


def test_sampling_settings_match_the_hf_path():
    rollout = RolloutConfig(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=33)
    kw = sampling_kwargs(rollout, {7, 2}, seed=11)
    assert kw == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,  # vLLM's "off"
        "max_tokens": 33,
        "stop_token_ids": [2, 7],
        "repetition_penalty": 1.0,
        "seed": 11,
        "skip_special_tokens": False,
    }
    hf = HFSampler.__new__(HFSampler)  # the HF path's own settings, for comparison
    HFSampler.__init__(hf, torch.nn.Linear(1, 1), rollout, {7, 2}, 0, "fp32")
    assert (hf.config.temperature, hf.config.top_p, hf.config.max_new_tokens) == (0.7, 0.9, 33)
    assert hf.config.repetition_penalty == 1.0 and hf.config.eos_token_id == kw["stop_token_ids"]


@pytest.mark.parametrize(
    ("ids", "reason", "stop", "expected"),
    [
        ([5, 6, 2], "stop", 2, ([5, 6, 2], True)),  # EOS kept
        ([5, 6], "stop", 7, ([5, 6, 7], True)),  # EOS left out by the engine: put back, the model must learn to stop
        ([5, 6, 8], "length", None, ([5, 6, 8], False)),  # cut at the budget
        ([5, 2, 8], "length", None, ([5, 2], True)),  # defensive: never keep tokens after an EOS
    ],
)
def test_engine_outputs_follow_the_sampler_contract(ids, reason, stop, expected):
    assert parse_output(ids, reason, stop, {2, 7}) == expected


def test_engine_weights_are_the_plain_checkpoint_names(tiny_model):
    model = models.load_model(str(tiny_model))
    with engine_weights(model) as weights:
        names = [n for n, _ in weights]
    assert names == [n for n, _ in model.named_parameters()]


def test_lora_weights_are_merged_for_the_engine_and_unmerged_after(tiny_model):
    from peft import LoraConfig, get_peft_model

    base = models.load_model(str(tiny_model))
    plain_names = [n for n, _ in base.named_parameters()]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter, so merging changes the weights
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    ids = torch.tensor([[1, 5, 9, 3]])
    before = model(input_ids=ids).logits
    with engine_weights(model) as weights:
        assert [n for n, _ in weights] == plain_names
        for name, tensor in weights:
            torch.testing.assert_close(tensor, merged[name])
    torch.testing.assert_close(model(input_ids=ids).logits, before)  # adapter unmerged again


def test_off_policy_modes_cannot_use_the_engine():
    with pytest.raises(OpcdError, match="samples the student"):
        validate(load_config(None, ["data.prompts=p.jsonl", "rollout.engine=vllm", "loss.mode=offpolicy"]))


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_one_line_with_the_install_command(tiny_model, prompts_file, tmp_path, capsys):
    with pytest.raises(OpcdError, match=r"pip install 'opcd-lm\[vllm\]'"):
        require_vllm()
    args = [f"model.student={tiny_model}", f"data.prompts={prompts_file}", "data.context=Be a pirate."]
    config = tmp_path / "c.toml"
    config.write_text("")
    assert main(["train", str(config), *args, "rollout.engine=vllm", f"train.run_dir={tmp_path / 'r'}"]) == 2
    assert "needs vLLM" in capsys.readouterr().err
