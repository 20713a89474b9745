"""Two training processes on this CPU (gloo), launched the way users launch them: `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from opcd.cli import main
from tests.conftest import TOY_CONTEXT


def _config(tmp_path, tiny_model, prompts_file):
    path = tmp_path / "c.toml"
    path.write_text(
        f'[model]\nstudent = "{tiny_model}"\ndtype = "fp32"\n[data]\nprompts = "{prompts_file}"\n'
        f'context = "{TOY_CONTEXT}"\n[rollout]\nmax_new_tokens = 6\n[train]\nprompts_per_step = 4\n'
        "micro_batch_size = 1\nsave_every = 1\ntensorboard = false\nlr = 1e-3\n"
    )
    return path


def _launch(config, *overrides, resume=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu is accelerate's name for "several local processes"; without GPUs they talk over gloo
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += ["-m", "opcd.cli", "train", str(config), *overrides] + (["--resume"] if resume else [])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, step):
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors")


def test_two_processes_take_the_same_steps_as_one(tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    one, two = tmp_path / "one", tmp_path / "two"
    # one process generates the step's 4 prompts in chunks of 2 (seeded by chunk); each of two ranks generates one chunk
    assert main(["train", str(config), f"train.run_dir={one}", "train.steps=3", "rollout.batch_size=2"]) == 0
    done = _launch(config, f"train.run_dir={two}", "train.steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run finished") == 1  # rank 0 speaks for the run
    resumed = _launch(config, f"train.run_dir={two}", "train.steps=3", resume=True)  # checkpoint + resume, 2 ranks
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b, strict=True):
        assert x["loss/value"] == pytest.approx(y["loss/value"], rel=1e-5)
        assert x["kl/reverse_full"] == pytest.approx(y["kl/reverse_full"], rel=1e-5)
        assert x["rollout/response_tokens"] == y["rollout/response_tokens"]
    wa, wb = _weights(one, 3), _weights(two, 3)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
    assert not torch.equal(_weights(one, 1)["model.embed_tokens.weight"], wa["model.embed_tokens.weight"])


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    done = _launch(config, f"train.run_dir={tmp_path / 'r'}", "train.steps=1", "train.prompts_per_step=3")
    assert done.returncode != 0
    assert "do not split evenly over 2 processes" in done.stderr
