"""Two training processes on this CPU (gloo), launched the way users launch them: `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
        "micro_batch_size = 1\nsave_every = 1\nreport_to = 'none'\nlr = 1e-3\n"
    )
    return path


ROOT = Path(__file__).resolve().parents[1]
FSDP = ("--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"))  # the file the README points to


def _launch(config, *overrides, resume=False, how=("--multi_gpu",)):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --multi_gpu is accelerate's name for "several local processes"; without GPUs they talk over gloo
    command = [sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2"]
    command += ["--num_machines", "1", "--main_process_port", "0"]
    if how[0] != "--config_file":
        command += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "opcd.cli", "train", str(config), *overrides] + (["--resume"] if resume else [])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run, step):
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def one_process_run(tiny_model, prompts_file, tmp_path_factory):
    """The reference: one process, 3 steps. It generates each step's 4 prompts in chunks of 2 (seeded by chunk);
    each of two ranks generates one chunk."""
    tmp_path = tmp_path_factory.mktemp("one")
    config = _config(tmp_path, tiny_model, prompts_file)
    run = tmp_path / "run"
    assert main(["train", str(config), f"train.run_dir={run}", "train.steps=3", "rollout.batch_size=2"]) == 0
    return run


@pytest.mark.parametrize("how", [("--multi_gpu",), FSDP], ids=["replicated", "fsdp"])
def test_two_processes_take_the_same_steps_as_one(how, one_process_run, tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    one, two = one_process_run, tmp_path / "two"
    done = _launch(config, f"train.run_dir={two}", "train.steps=2", how=how)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run finished") == 1  # rank 0 speaks for the run
    assert ("student sharded with FSDP2 over 2 processes" in done.stdout) == (how == FSDP)
    resumed = _launch(config, f"train.run_dir={two}", "train.steps=3", resume=True, how=how)  # resume on 2 ranks
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


def test_the_rate_by_signal_is_the_same_over_two_processes(tiny_model, prompts_file, tmp_path):
    """Each rank measures its own micro-batches' parts; summed over ranks they are the one process's parts."""
    config = _config(tmp_path, tiny_model, prompts_file)
    one, two = tmp_path / "one", tmp_path / "two"
    signal = ("train.lr_by_signal=true", "train.steps=2", "rollout.batch_size=2")
    assert main(["train", str(config), f"train.run_dir={one}", *signal]) == 0
    done = _launch(config, f"train.run_dir={two}", *signal)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _metrics(one), _metrics(two)
    assert [r["optim/signal"] for r in a] == pytest.approx([r["optim/signal"] for r in b], rel=1e-4)
    assert all(0 < r["optim/signal"] < 1 for r in a)
    wa, wb = _weights(one, 2), _weights(two, 2)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    done = _launch(config, f"train.run_dir={tmp_path / 'r'}", "train.steps=1", "train.prompts_per_step=3")
    assert done.returncode != 0
    assert "do not split evenly over 2 processes" in done.stderr


def test_what_fsdp_does_not_cover_is_refused_before_loading(tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    done = _launch(config, f"train.run_dir={tmp_path / 'r'}", "model.lora_rank=4", how=FSDP)
    assert done.returncode != 0
    assert "FSDP (accelerate config distributed_type: FSDP): LoRA adapters" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_replicated_checkpoint_is_not_resumed_under_fsdp(tiny_model, prompts_file, tmp_path):
    config = _config(tmp_path, tiny_model, prompts_file)
    run = tmp_path / "r"
    assert main(["train", str(config), f"train.run_dir={run}", "train.steps=1"]) == 0
    done = _launch(config, f"train.run_dir={run}", "train.steps=2", resume=True, how=FSDP)
    assert done.returncode != 0
    assert "was written with replicated weights; launch it the same way" in done.stderr


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "set fsdp_version: 2"),
    ],
)
def test_launch_configurations_opcd_does_not_run_are_named(monkeypatch, env, message):
    from opcd.core.distributed import Ranks
    from opcd.errors import OpcdError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(OpcdError, match=message):
        Ranks()


def test_a_game_trains_over_two_processes(tiny_model, tmp_path):
    """Each rank plays its own episodes (their turn counts differ); the step sums their gradients and counts."""
    config = tmp_path / "g.toml"
    config.write_text(
        f'[model]\nstudent = "{tiny_model}"\ndtype = "fp32"\n[data]\nprompts = "game:frozenlake"\n'
        'context = "- EXPERIENCE ITEM: H is a hole; walk around it."\nplacement = "user"\n'
        "[rollout]\nmax_new_tokens = 5\n[train]\nprompts_per_step = 4\nmicro_batch_size = 1\nsteps = 2\n"
        "save_every = 2\nreport_to = 'none'\n"
    )
    run = tmp_path / "run"
    done = _launch(config, f"train.run_dir={run}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run finished") == 1
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # per episode, over the 4 episodes of both ranks
        assert 1 <= r["rollout/turns"] <= 5 and 0 <= r["rollout/success"] <= 1 and r["loss/value"] > 0
    assert (run / "checkpoints" / "step-000002").is_dir()
