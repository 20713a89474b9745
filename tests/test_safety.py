"""Runs that cannot be hijacked, mixed up or silently lost: safe loading, the run-directory lock, resume that never
loses work, the disk, and bad input that gets one line (docs/testing.md lists each case and its message)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opcd.cli import main
from opcd.core.checkpoint import list_checkpoints
from opcd.core.metrics import read_metrics

from .conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path, tiny_model, prompts_file, run, *flags, **extra) -> int:
    config = tmp_path / "empty.toml"
    config.write_text("")
    settings = {"train.save_every": 1, **extra}
    return main(["train", str(config), *tiny_overrides(tiny_model, prompts_file, run, **settings), *flags])


def _weights(run: Path, step: int) -> dict:
    return load_file(dict(list_checkpoints(run))[step] / "model" / "model.safetensors")


def _same_weights(a: Path, b: Path, step: int) -> bool:
    wa, wb = _weights(a, step), _weights(b, step)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _one_error_line(capsys) -> str:
    """The one error line on stderr (progress bars of the steps before it may stand above it), and no traceback."""
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.splitlines() if "opcd: error: " in line]
    assert len(lines) == 1 and lines[0].startswith("opcd: error: ") and "Traceback" not in err, err[-2000:]
    return lines[0]


class _Exploit:
    """Unpickling this runs a shell command: what a hostile trainer_state.pt could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_planted_pickle_is_refused_and_runs_no_code(tiny_model, prompts_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tmp_path, tiny_model, prompts_file, run, **{"train.steps": 1}) == 0
    marker = tmp_path / "pwned"
    [(_, checkpoint)] = list_checkpoints(run, resumable=True)
    torch.save({"step": _Exploit(marker)}, checkpoint / "trainer_state.pt")
    capsys.readouterr()
    assert _train(tmp_path, tiny_model, prompts_file, run, "--resume", **{"train.steps": 2}) == 2
    assert "no checkpoint can be read safely" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tiny_model, prompts_file, tmp_path, capsys):
    full, run = tmp_path / "full", tmp_path / "run"
    assert _train(tmp_path, tiny_model, prompts_file, full, **{"train.steps": 3}) == 0
    assert _train(tmp_path, tiny_model, prompts_file, run, **{"train.steps": 3}) == 0
    weights = dict(list_checkpoints(run))[3] / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as by a full disk or a bad copy
    capsys.readouterr()
    assert _train(tmp_path, tiny_model, prompts_file, run, "--resume", **{"train.steps": 3}) == 0
    assert "trying the checkpoint before it" in capsys.readouterr().out
    assert _same_weights(full, run, 3)  # step 3 trained again from step 2, exactly
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_refuses_when_there_is_nothing_to_resume(tiny_model, prompts_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tmp_path, tiny_model, prompts_file, run, "--resume", **{"train.steps": 1}) == 2
    assert "holds no checkpoint to resume from" in _one_error_line(capsys)
    assert not run.exists()
    assert _train(tmp_path, tiny_model, prompts_file, run, "--resume=if-possible", **{"train.steps": 1}) == 0
    assert [s for s, _ in list_checkpoints(run)] == [1]


def test_a_moved_run_resumes_and_a_changed_prompts_file_is_refused(tiny_model, prompts_file, tmp_path, capsys):
    run, moved = tmp_path / "run", tmp_path / "bigger-disk" / "run"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(prompts_file.read_bytes())
    assert _train(tmp_path, tiny_model, prompts, run, **{"train.steps": 2}) == 0
    moved.parent.mkdir()
    run.rename(moved)
    (moved / "checkpoints" / ".step-000003-leftover").mkdir()  # what a kill during a checkpoint write leaves
    assert _train(tmp_path, tiny_model, prompts, moved, "--resume", **{"train.steps": 3}) == 0
    assert not (moved / "checkpoints" / ".step-000003-leftover").exists()
    assert [r["step"] for r in read_metrics(moved / "metrics.jsonl")] == [1, 2, 3]
    prompts.write_text(prompts.read_text() + '{"prompt": "One more question?"}\n')
    capsys.readouterr()
    assert _train(tmp_path, tiny_model, prompts, moved, "--resume", **{"train.steps": 4}) == 2
    assert "changed since the checkpoint: the content of data.prompts" in _one_error_line(capsys)


def test_a_second_run_on_a_held_directory_is_refused(tiny_model, prompts_file, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "from opcd.core import rundir; import pathlib, time\n"
         f"with rundir.hold(pathlib.Path({str(run)!r})):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(tmp_path, tiny_model, prompts_file, run, **{"train.steps": 1}) == 2
        line = _one_error_line(capsys)
        assert "is in use by another opcd run (pid " in line and str(holder.pid) in line
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()  # like a crash: the kernel drops its lock, its note stays
        holder.wait()
    assert _train(tmp_path, tiny_model, prompts_file, run, **{"train.steps": 1}) == 0
    assert "taking over the lock of a run that is no longer running" in capsys.readouterr().out


def test_random_kills_during_training_and_checkpoint_writes_resume_bit_identical(tiny_model, prompts_file, tmp_path):
    """kill -9 at random times (during start-up, steps and checkpoint writes alike), at least five times; each killed
    run is resumed with --resume=if-possible until it finishes, and then equals the uninterrupted run exactly."""
    steps, config = 6, tmp_path / "run.toml"
    config.write_text("")

    def command(run: Path, *flags: str) -> list[str]:
        overrides = tiny_overrides(tiny_model, prompts_file, run, **{"train.steps": steps, "train.save_every": 1})
        return [sys.executable, "-m", "opcd.cli", "train", str(config), *overrides, *flags]

    began = time.perf_counter()
    assert subprocess.run(command(tmp_path / "full"), capture_output=True, cwd=ROOT).returncode == 0
    whole = time.perf_counter() - began
    rng, kills = random.Random(0), 0
    for campaign in range(6):
        run = tmp_path / f"killed-{campaign}"
        for _ in range(12):
            proc = subprocess.Popen(command(run, "--resume=if-possible"), stderr=subprocess.DEVNULL, cwd=ROOT)
            try:
                if proc.wait(timeout=rng.uniform(0.3, 1.0) * whole) == 0:
                    break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        last = subprocess.run(command(run, "--resume=if-possible"), capture_output=True, text=True, cwd=ROOT)
        assert last.returncode == 0, last.stderr[-2000:]
        assert _same_weights(tmp_path / "full", run, steps)
        losses = [[r["loss/value"] for r in read_metrics(r / "metrics.jsonl")] for r in (tmp_path / "full", run)]
        assert losses[0] == losses[1] and len(losses[0]) == steps
        if kills >= 5:
            break
    assert kills >= 5


def _die_inside_a_checkpoint_write(overrides: list[str]) -> None:
    from opcd.config import load_config
    from opcd.core import checkpoint
    from opcd.core.train import train

    real = checkpoint.torch.save

    def save_then_die(value, path, *args, **kwargs):
        real(value, path, *args, **kwargs)
        if "step-000002" in str(path):
            os._exit(9)  # the model and the trainer state are in the temporary directory, not yet renamed

    checkpoint.torch.save = save_then_die
    train(load_config(None, overrides), resume="if-possible", progress=False)


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_checkpoint_to_resume(
    tiny_model, prompts_file, tmp_path, capsys
):
    import multiprocessing as mp

    run, full = tmp_path / "run", tmp_path / "full"
    overrides = tiny_overrides(tiny_model, prompts_file, run, **{"train.steps": 3, "train.save_every": 1})
    proc = mp.get_context("spawn").Process(target=_die_inside_a_checkpoint_write, args=(overrides,))
    proc.start()
    proc.join(180)
    assert proc.exitcode == 9
    assert [s for s, _ in list_checkpoints(run)] == [1] and list((run / "checkpoints").glob(".step-000002-*"))
    assert _train(tmp_path, tiny_model, prompts_file, run, "--resume", **{"train.steps": 3}) == 0
    assert not list((run / "checkpoints").glob(".step-*"))
    assert _train(tmp_path, tiny_model, prompts_file, full, **{"train.steps": 3}) == 0
    assert _same_weights(full, run, 3)


def _mount(disk: Path, size: str) -> str:
    """A tmpfs of `size` at `disk`; the reason it could not be mounted, or ""."""
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    return "" if done.returncode == 0 else done.stderr.decode().strip()[:100] or "mount failed"


@pytest.fixture
def small_disks(tmp_path):
    disks = [tmp_path / "disk40", tmp_path / "disk10"]
    for disk, size in zip(disks, ("40M", "10M"), strict=True):
        why = _mount(disk, size)
        if why:
            pytest.skip(f"no small disk to fill here (mount tmpfs: {why})")
    yield disks
    for disk in disks:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_gives_one_line_and_keeps_the_checkpoints(tiny_model, prompts_file, tmp_path, small_disks, capsys):
    """A checkpoint of the tiny model takes about 23 MB: the 40 MB disk holds one and refuses the second before
    writing it; on the 10 MB disk the first write fills the disk."""
    small_disk, tiny_disk = small_disks
    run = small_disk / "run"
    assert _train(tmp_path, tiny_model, prompts_file, run, **{"train.steps": 4, "train.report_to": "none"}) == 2
    line = _one_error_line(capsys)
    assert line.startswith("opcd: error: not enough disk space for checkpoint") and "intact" in line
    found = list_checkpoints(run, resumable=True)
    assert found and not list((run / "checkpoints").glob(".step-*"))
    # moving the run to a bigger disk is the fix, and it resumes there
    bigger = tmp_path / "bigger"
    subprocess.run(["cp", "-r", str(run), str(bigger)], check=True)
    assert _train(tmp_path, tiny_model, prompts_file, bigger, "--resume", **{"train.steps": 4}) == 0
    assert [r["step"] for r in read_metrics(bigger / "metrics.jsonl")] == [1, 2, 3, 4]
    # a write that fills the disk: one line, no half-written checkpoint left behind
    assert _train(tmp_path, tiny_model, prompts_file, tiny_disk / "run", **{"train.steps": 1}) == 2
    assert "the disk filled up while writing checkpoint" in _one_error_line(capsys)
    assert not list((tiny_disk / "run" / "checkpoints").glob("*")) and not list_checkpoints(tiny_disk / "run")
    # a disk already full before the run starts: one line too
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * free)
    assert _train(tmp_path, tiny_model, prompts_file, small_disk / "new", **{"train.steps": 1}) == 2
    assert "Traceback" not in _one_error_line(capsys)
