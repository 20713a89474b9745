"""End to end on a real packaged model: `opcd train` with a system prompt, then load the checkpoint back."""

from __future__ import annotations

import subprocess
import sys

import torch

from opcd.core.checkpoint import list_checkpoints
from opcd.core.metrics import read_metrics


def test_opcd_train_on_smollm2(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "opcd.cli",
        "train",
        "configs/system_prompt.toml",
        "model.student=smollm2-135m-instruct",
        "data.max_prompts=16",
        "rollout.max_new_tokens=12",
        "train.steps=2",
        "train.prompts_per_step=4",
        "train.micro_batch_size=2",
        "train.save_every=1",
        "train.keep_checkpoints=1",
        f"train.run_dir={run_dir}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["kl/reverse_full"] > 0 and torch.isfinite(torch.tensor(r["loss/value"])) for r in rows)
    assert [s for s, _ in list_checkpoints(run_dir)] == [2]  # keep_checkpoints=1 pruned step 1

    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = list_checkpoints(run_dir)[-1][1] / "model"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi!"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
