"""What the allocator costs a training step, in time and in peak memory.

Each setting trains the packaged Qwen2.5-Coder-0.5B with `configs/system_prompt.toml` (full fine-tuning, 8 prompts a
step) in a fresh process, and records the median `time/*` of steps 2 onwards, the peak resident memory, the seconds
spent in the kernel and the minor page faults of the whole process, and the resident memory after every step.
Settings:

- `mmap 1 MB`: glibc, every block of 1 MB or more mapped when allocated and unmapped when freed (what opcd set
  before 0.2.0, and what `train()` falls back to without mimalloc);
- `glibc default`: glibc left alone (blocks over its dynamic threshold, at most 32 MB, are still mapped and unmapped);
- `glibc heap`: glibc, every block from the heap and the heap never trimmed (no mapping at all);
- `glibc + huge pages`: glibc left alone, torch's allocations of 2 MB or more in huge pages (`THP_MEM_ALLOC_ENABLE=1`);
- `mimalloc`: mimalloc preloaded, its default settings (freed pages purged after 10 ms);
- `opcd`: what the `opcd` command does (`opcd/core/heap.py`): mimalloc preloaded, freed pages kept for reuse.

Three runs: `short` (6 steps, 32-token answers: full fine-tuning's step), `long` (12 steps, 256-token answers: the
run that grew past 24 GB under glibc's default and was killed) and `long lora`, the same at `distill-prompt`'s preset
(LoRA rank 8 at lr 3e-4).

    .venv/bin/python benchmarks/allocator.py --runs short                       # every setting (about 18 min)
    .venv/bin/python benchmarks/allocator.py --runs long --settings "mmap 1 MB" opcd    # (about 45 min)

Writes `benchmarks/results/allocator.{md,json,png}` after every finished run; a row replaces the earlier one of the
same run and setting, so runs can be measured one at a time. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from opcd.core import heap  # noqa: E402 (after the path)

SETTINGS = ("mmap 1 MB", "glibc default", "glibc heap", "glibc + huge pages", "mimalloc", "opcd")
LORA = ("model.lora_rank=8", "train.lr=3e-4")  # distill-prompt's preset over the config's full fine-tuning
RUNS = {"short": (6, 32, ()), "long": (12, 256, ()), "long lora": (12, 256, LORA)}  # name: (steps, tokens, overrides)
PARTS = ("generate", "teacher", "student", "optimizer", "step")


def child_env(setting: str) -> dict:
    """The environment a setting's process starts with (a preloaded library must be there from the start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPCD_KEEP_MALLOC", "OPCD_RELAUNCHED")}
    if setting == "opcd":
        return heap.preload_env(env) or env
    env["OPCD_KEEP_MALLOC"] = "1"  # opcd leaves the allocator alone; the setting decides
    if setting == "glibc + huge pages":
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    if setting == "mimalloc":
        env["LD_PRELOAD"] = str(heap.mimalloc_library())
    return env


def child(setting: str, args: list[str]) -> None:
    """Train under `setting` (this process), as `opcd train` would."""
    libc = ctypes.CDLL("libc.so.6")
    if setting == "mmap 1 MB":
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    if setting == "glibc heap":
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mapping
        libc.mallopt(-1, ctypes.c_int(2**31 - 1))  # M_TRIM_THRESHOLD: never trimmed
    from opcd.cli import main as opcd_main

    sys.exit(opcd_main(["train", *args]))


def run(setting: str, name: str) -> dict:
    steps, tokens, overrides = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            str(ROOT / "configs" / "system_prompt.toml"),
            f"train.steps={steps}",
            f"rollout.max_new_tokens={tokens}",
            "train.save_every=0",
            "train.report_to=none",
            f"train.run_dir={tmp}/run",
            *overrides,
        ]
        began = time.perf_counter()
        command = [sys.executable, __file__, "--child", setting, "--", *args]
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env(setting))
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise RuntimeError(f"{setting}: the training process failed (wait status {status})")
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:]
    return {
        "run": name,
        "setting": setting,
        "steps": steps,
        "tokens": tokens,
        **{f"{p}_s": statistics.median(r[f"time/{p}"] for r in later) for p in PARTS},
        "response_tokens": statistics.mean(r["rollout/response_tokens"] for r in rows),
        "wall_s": time.perf_counter() - began,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
        "resident_gb": [r.get("memory/resident_gib", float("nan")) for r in rows],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| run | setting | generate s | teacher s | student s | optimizer s | step s | kernel s | minor faults | "
        "peak RSS GiB | resident after last step GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_label(_run(r))} | {r['setting']} | {r['generate_s']:.2f} | "
            f"{r['teacher_s']:.2f} | {r['student_s']:.2f} | {r['optimizer_s']:.2f} | {r['step_s']:.2f} | "
            f"{r['system_s']:.0f} | {r['minor_faults']:,} | {r['peak_rss_gb']:.2f} | {r['resident_gb'][-1]:.2f} |"
        )
    return "\n".join(lines)


def _label(name: str) -> str:
    """A run's name in the table and the plot: its steps and answer length, and LoRA where it overrides."""
    steps, tokens, overrides = RUNS[name]
    return f"{steps} steps × ≤{tokens} tokens{', LoRA' if overrides else ''}"


def _run(row: dict) -> str:
    """The run a row belongs to (rows measured before the LoRA run existed do not name it)."""
    return row.get("run") or next(n for n, (s, t, _) in RUNS.items() if (s, t) == (row["steps"], row["tokens"]))


def plot(rows: list[dict], path: Path) -> None:
    from opcd.io import pyplot, save_figure

    plt = pyplot()
    runs = [name for name in RUNS if any(_run(r) == name for r in rows)]
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(5 * (1 + len(runs)), 4))
    labels = [f"{r['setting']}\n{_run(r)}" for r in rows]
    axes[0].bar(range(len(rows)), [r["step_s"] for r in rows], color="tab:blue")
    axes[0].set_xticks(range(len(rows)), labels, fontsize=7)
    axes[0].set(ylabel="median step time (s)", title="Step time")
    for ax, name in zip(axes[1:], runs, strict=True):
        for r in rows:
            if _run(r) == name:
                ax.plot(range(1, len(r["resident_gb"]) + 1), r["resident_gb"], marker="o", label=r["setting"])
        ax.set(xlabel="step", ylabel="resident memory after the step (GiB)", title=_label(name))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--render", action="store_true", help="rewrite the table and plot from allocator.json only")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rest)
        return
    from opcd.io import write_json, write_text

    saved = RESULTS / "allocator.json"
    rows = json.loads(saved.read_text()) if saved.exists() else []
    rows = [r for r in rows if "setting" in r and "steps" in r]  # rows of this benchmark's current form
    header = (
        "Qwen2.5-Coder-0.5B, configs/system_prompt.toml (full fine-tuning, 8 prompts a step; the LoRA run at "
        "distill-prompt's preset), one process each\n\n"
    )
    for name in [] if args.render else args.runs:
        for setting in args.settings:
            print(f"{name}: {setting}", flush=True)
            row = run(setting, name)
            rows = [r for r in rows if (_run(r), r["setting"]) != (name, setting)] + [row]
            rows.sort(key=lambda r: (list(RUNS).index(_run(r)), SETTINGS.index(r["setting"])))
            print(table([row]), flush=True)
            write_text(RESULTS / "allocator.md", header + table(rows) + "\n")
            write_json(saved, rows)
            plot(rows, RESULTS / "allocator.png")
    if args.render:
        write_text(RESULTS / "allocator.md", header + table(rows) + "\n")
        plot(rows, RESULTS / "allocator.png")
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
