"""The null test: distilling a context that changes nothing must leave the student where it started.

Each cell trains the packaged Qwen2.5-Coder-0.5B with `configs/system_prompt.toml` (the CPU preset: 20 steps × 8
prompts, 32-token rollouts, full reverse KL, lr 1e-5 with 2 warmup steps) on the neutral context "You are a helpful
assistant." (`loss.min_kl=0`, since the context changes almost nothing), with the cell's overrides on top, one fresh
`opcd train` process per (cell, seed). The reverse KL to the teacher on each step's own samples should stay near its
step-1 value; a KL that grows with the steps is the optimizer moving the student away from the teacher it is asked to
match. Fixed before any run: the cells, seeds 0 and 1, and the summary (KL at step 1, the mean of steps 16–20, their
ratio, the mean grad norm of steps 3–20).

    .venv/bin/python benchmarks/null_test.py                      # every cell, seeds 0 and 1 (about 15 min)
    .venv/bin/python benchmarks/null_test.py --cells default cosine --seeds 0

Writes `benchmarks/results/null_test.{md,json,png}` after every run (a rerun of a cell and seed replaces its row).
Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NEUTRAL = "You are a helpful assistant."
CELLS = {
    "default": [],  # constant lr 1e-5 after 2 warmup steps (the preset)
    "cosine": ["train.lr_schedule=cosine"],  # the same peak rate, decaying toward 0 at step 20
    "beta1 0.99": ["train.beta1=0.99"],  # Adam's first moment averages ~100 steps of noise instead of ~10
    # Adam's ε above the gradients of noise: a weight whose gradient is far below ε moves in proportion to it, not by
    # the full rate. The norm clip is off, since clipping a real behaviour's gradient (norm 5-10 at step 1) to 1 would
    # bring it down to the null test's (norm ~1) and erase the difference ε is to see.
    "eps 1e-5": ["train.adam_eps=1e-5", "train.max_grad_norm=0"],
    "eps 1e-4": ["train.adam_eps=1e-4", "train.max_grad_norm=0"],
    # added after the defaults study's LoRA cells kept GSM8K under a list format: the same setting here
    "lora r8": ["model.lora_rank=8", "train.lr=1e-4"],
    # added after `lora r8` learned no French in the defaults study: its 3x rate, the study's `lora r8 lr3e-4`
    "lora r8 lr3e-4": ["model.lora_rank=8", "train.lr=3e-4"],
    # added 2026-12-04 (night), before their runs: that preset with ε above the null test's adapter gradients (a grad
    # norm of 0.35-0.39 over its 4.4 M weights is about 1.8e-4 a weight; a behaviour's, 1-2, about 5-10e-4), the clip
    # off as in the ε cells above
    "lora r8 lr3e-4 eps1e-4": ["model.lora_rank=8", "train.lr=3e-4", "train.adam_eps=1e-4", "train.max_grad_norm=0"],
    "lora r8 lr3e-4 eps3e-4": ["model.lora_rank=8", "train.lr=3e-4", "train.adam_eps=3e-4", "train.max_grad_norm=0"],
    # added 2026-12-04 (late night), before its runs, with the defaults study's cell of the same name: twice the prompts
    # a step. Adam's step on pure noise does not shrink with the batch (its first moment and the root of its second
    # both scale with the noise), so the drift is expected to stay; a smaller drift would refute that account
    "lora r8 lr3e-4 p16": [
        "model.lora_rank=8",
        "train.lr=3e-4",
        "train.prompts_per_step=16",
        "train.micro_batch_size=16",
    ],
    # added 2026-12-05 (04:22), before their runs, with the defaults study's cells of the same names. The preset's KL
    # rises within 2-3 steps to a level it then keeps (0.007-0.012 at lr 3e-4, 0.002 at 1e-4: about the rate squared),
    # so a rate falling to 0 by step 20 should bring it back; 6e-4 gives the same summed rate as a constant 3e-4.
    # "Holds" is fixed now: the mean KL of steps 16-20 at most 3x step 1's on both seeds (lr 1e-4: 2.1-2.2x)
    "lora r8 lr3e-4 cosine": ["model.lora_rank=8", "train.lr=3e-4", "train.lr_schedule=cosine"],
    "lora r8 lr6e-4 cosine": ["model.lora_rank=8", "train.lr=6e-4", "train.lr_schedule=cosine"],
    # added 2026-12-05 (04:34), before its runs, after the cosine cells had kept the KL at 0.004-0.010 while the rate
    # fell to 0: is the preset's KL a plateau the rate sets, or a drift that grows with steps? Its first 20 steps are
    # the preset's run (a constant rate); its summary's last five are steps 36-40
    "lora r8 lr3e-4 x40": ["model.lora_rank=8", "train.lr=3e-4", "train.steps=40"],
    # added 2026-12-05 (04:44), before their runs, with the study's cells of the same names: each step's rate times the
    # share of its gradient that its two micro-batches of 4 agree on (`train.lr_by_signal`, opcd/core/signal.py), at
    # the preset's rate and at 1e-3 (on a tiny model the share of a context being learned fell from 0.8 to 0.2-0.4)
    "lora r8 lr3e-4 signal": [
        "model.lora_rank=8",
        "train.lr=3e-4",
        "train.lr_by_signal=true",
        "train.micro_batch_size=4",
    ],
    "lora r8 lr1e-3 signal": [
        "model.lora_rank=8",
        "train.lr=1e-3",
        "train.lr_by_signal=true",
        "train.micro_batch_size=4",
    ],
    # added 2026-12-05 (05:55), before its runs, with the study's cell of the same name, after the rate by signal had
    # held the null test at 3e-4 and learned no French in 20 steps there (mean share 0.25-0.30): twice that rate for
    # twice the steps, about the preset's summed rate. Fixed now: it runs French (40 steps) only if it holds the null
    # test (at most 3x over its last 5 steps, both seeds); it cannot replace the preset on French alone
    "lora r8 lr6e-4 signal x40": [
        "model.lora_rank=8",
        "train.lr=6e-4",
        "train.steps=40",
        "train.lr_by_signal=true",
        "train.micro_batch_size=4",
    ],
    # added 2026-12-05 (07:01), before their runs, with the study's cells of the same names: the preset with its rate
    # times min(1, step KL / kappa) (`train.full_rate_kl`; Polyak's rule for a loss whose least value is 0), kappa 0.01
    # (10x loss.min_kl) and 0.02 (below every step KL, min 0.023, of the study's preset behaviour runs' first 20
    # steps, so those runs are unchanged by it). Fixed now: the smaller kappa that holds the null test (at most 3x over
    # its last 5 steps, both seeds) runs the study's `null` (its rule) and French; it replaces the preset if French's
    # step KLs equal the preset's (then the other behaviours' runs are the preset's) and `null` holds its rule
    "lora r8 lr3e-4 klrate1e-2": ["model.lora_rank=8", "train.lr=3e-4", "train.full_rate_kl=0.01"],
    "lora r8 lr3e-4 klrate2e-2": ["model.lora_rank=8", "train.lr=3e-4", "train.full_rate_kl=0.02"],
    # added 2026-12-05 (07:14), before its runs, after both LoRA cells above had held: the rate by KL (0.01) on full
    # fine-tuning, `opcd train`'s paper settings, whose drift (the `default` cell) is 4-5x LoRA's. Not a study cell
    "klrate 1e-2": ["train.full_rate_kl=0.01"],
    # added 2026-12-05 (07:42), before its runs, after `klrate 1e-2` seed 0 had not held (0.0012 -> 0.048: at 12-66 %
    # of full fine-tuning's rate the first steps already pushed the KL past 0.01, and from there the rate is full):
    # ten times the floor. With the study's cell of the same name (French, only if this holds, both seeds)
    "klrate 1e-1": ["train.full_rate_kl=0.1"],
    # added 2026-12-05 (07:31), before its runs, after the 0.01 cell had held for 20 steps: does it hold for 40, where
    # the preset's drift grew to 21-23x (`lora r8 lr3e-4 x40`)? Its summary's last five steps are 36-40
    "lora r8 lr3e-4 klrate1e-2 x40": [
        "model.lora_rank=8",
        "train.lr=3e-4",
        "train.full_rate_kl=0.01",
        "train.steps=40",
    ],
}


def run_cell(name: str, seed: int, work: Path) -> list[dict]:
    run_dir = work / f"{name.replace(' ', '_')}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        str(ROOT / ".venv" / "bin" / "opcd"), "train", str(ROOT / "configs" / "system_prompt.toml"),
        f"data.context={NEUTRAL}", "loss.min_kl=0", f"train.seed={seed}", f"train.run_dir={run_dir}",
        "train.save_every=0", "train.report_to=none", *CELLS[name],
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 2.5 GB each; the metrics are what is kept
    return rows


def summary(rows: list[dict]) -> dict:
    kl = [r["kl/reverse_full"] for r in rows]
    return {
        "kl": kl,
        "kl_first": kl[0],
        "kl_last5": statistics.mean(kl[-5:]),
        "growth": statistics.mean(kl[-5:]) / max(kl[0], 1e-9),
        "grad_norm": statistics.mean(r["optim/grad_norm"] for r in rows[2:]),
        "truncated": statistics.mean(r["rollout/truncated"] for r in rows),
        **({"signal": [r["optim/signal"] for r in rows]} if "optim/signal" in rows[0] else {}),
    }


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "null_test.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        f'Null test: `opcd train configs/system_prompt.toml "data.context={NEUTRAL}" loss.min_kl=0` plus each cell\'s '
        "overrides; reverse KL to the teacher on each step's own samples (nats/token).",
        "",
        "| cell | seed | KL step 1 | KL last 5 steps | ratio | grad norm (step 3 on) | rollouts cut at 32 tokens "
        "| signal share (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, s in sorted(results.items()):
        cell, seed = key.rsplit("/", 1)
        share = f"{statistics.mean(s['signal']):.2f}" if "signal" in s else "–"
        lines.append(
            f"| {cell} | {seed} | {s['kl_first']:.4f} | {s['kl_last5']:.4f} | {s['growth']:.1f}× | "
            f"{s['grad_norm']:.2f} | {s['truncated']:.0%} | {share} |"
        )
    (RESULTS / "null_test.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    cells = sorted({key.rsplit("/", 1)[0] for key in results})
    colour = plt.get_cmap("tab20")
    for i, cell in enumerate(cells):
        runs = [s for key, s in sorted(results.items()) if key.rsplit("/", 1)[0] == cell]
        for j, s in enumerate(runs):
            ax.plot(range(1, len(s["kl"]) + 1), s["kl"], color=colour(i), alpha=0.8, label=cell if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("reverse KL to the teacher (nats/token)")
    ax.set_title(f'Null test: distilling "{NEUTRAL}" (one line per seed)')
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "null_test.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--work", default=str(ROOT / "runs" / "null_test"), help="where the runs go")
    args = parser.parse_args()
    path = RESULTS / "null_test.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for seed in args.seeds:
        for cell in args.cells:
            results[f"{cell}/{seed}"] = summary(run_cell(cell, seed, Path(args.work)))
            write(results)
    sys.exit(0)


if __name__ == "__main__":
    main()
