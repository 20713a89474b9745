"""`opcd demo`: distill a system prompt into the default model on this CPU and show the effect.

Measures how often held-out answers follow the system prompt for the base model without it, the base model with it
(the teacher), and the OPCD student without it; trains in between; writes `report.md` and `training.png` into the
run directory. Re-running with the same run directory resumes training rather than starting over.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from opcd import models
from opcd.checkpoint import list_checkpoints
from opcd.config import DataConfig, RolloutConfig, load_config
from opcd.data import load_examples
from opcd.evaluate import adherence
from opcd.metrics import read_metrics
from opcd.prompts import PromptRenderer
from opcd.tasks.behaviours import build_checker
from opcd.train import train

SYSTEM_PROMPT = "Always answer in French, whatever language the question is in."
CHECKER = "language:fr"
HELD_OUT = 24
EVAL = RolloutConfig(temperature=0.0, max_new_tokens=48)  # greedy: a small, low-variance check
DEMO_CONFIG = [
    "model.student=qwen2.5-coder-0.5b-instruct",
    "data.prompts=opcd:generic_train",
    f"data.context={SYSTEM_PROMPT}",
    "loss.estimator=full",
    "rollout.max_new_tokens=32",
    "train.steps=20",
    "train.prompts_per_step=8",
    "train.micro_batch_size=8",
    "train.lr=1e-5",
    "train.warmup_steps=2",
    "train.save_every=10",
    "train.keep_checkpoints=1",
]


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["kl/reverse_full"] for r in rows], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("reverse KL to the teacher (nats/token)")
    ax.set_title("OPCD: student without the prompt vs teacher with it")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run_demo(run_dir: str, overrides: list[str]) -> Path:
    began = time.time()
    cfg = load_config(None, [*DEMO_CONFIG, f"train.run_dir={run_dir}", *overrides])
    checker = build_checker(CHECKER)
    tokenizer = models.load_tokenizer(cfg.model.student)
    renderer = PromptRenderer(tokenizer, cfg.data)
    held_out = load_examples(DataConfig(prompts="opcd:generic_eval", context=cfg.data.context, max_prompts=HELD_OUT))
    base = models.load_model(cfg.model.student, cfg.model.dtype)
    kw = {"rollout": EVAL, "dtype": cfg.model.dtype}
    print(f"opcd demo: evaluating the base model on {len(held_out)} held-out prompts ...")
    base_without = adherence(base, tokenizer, renderer, held_out, checker, with_context=False, **kw)
    base_with = adherence(base, tokenizer, renderer, held_out, checker, with_context=True, **kw)
    del base
    print(f"opcd demo: training ({cfg.train.steps} OPCD steps of {cfg.train.prompts_per_step} prompts) ...")
    run = train(cfg, resume=True)
    student = models.load_model(str(list_checkpoints(run)[-1][1] / "model"), cfg.model.dtype)
    opcd_without = adherence(student, tokenizer, renderer, held_out, checker, with_context=False, **kw)

    rows = read_metrics(run / "metrics.jsonl")
    _plot(rows, run / "training.png")
    table = [
        ("Base, without the prompt", base_without.rate),
        ("In-context (teacher): base with the prompt", base_with.rate),
        ("OPCD student, without the prompt", opcd_without.rate),
    ]
    lines = [
        "# opcd demo",
        "",
        f'System prompt distilled: "{SYSTEM_PROMPT}" into `{cfg.model.student}`; checker `{CHECKER}`; '
        f"{len(held_out)} held-out prompts (opcd:generic_eval), greedy, {EVAL.max_new_tokens} new tokens.",
        "",
        "| model | adherence |",
        "|---|---|",
        *[f"| {name} | {rate:.0%} |" for name, rate in table],
        "",
        f"Reverse KL to the teacher on the student's own samples: step 1 {rows[0]['kl/reverse_full']:.3f} → "
        f"step {rows[-1]['step']} {rows[-1]['kl/reverse_full']:.3f} nats/token (`metrics.jsonl`, `training.png`).",
        f"Wall time: {time.time() - began:.0f} s.",
        "",
        "## Held-out answers (without the prompt): base → OPCD student",
        "",
    ]
    for ex, before, after in zip(held_out[:6], base_without.responses, opcd_without.responses, strict=False):
        lines += [f"- **{ex.messages[-1]['content']}**", f"  - base: {before!r}", f"  - OPCD: {after!r}"]
    report = run / "report.md"
    for path, text in ((report, "\n".join(lines) + "\n"), (run / "demo.json", json.dumps(dict(table), indent=1))):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader never sees half a report

    width = max(len(name) for name, _ in table)
    print()
    for name, rate in table:
        print(f"{name:<{width}}  {rate:6.0%}")
    print(f"\nreport: {report}  plot: {run / 'training.png'}  ({time.time() - began:.0f} s)")
    return run
