"""The paper's system-prompt comparison on this CPU: Base, In-Context, off-policy distillation and OPCD.

For each system prompt (four behaviours and one task-accuracy prompt), each method and each seed, one
`opcd distill-prompt` run (`opcd.recipes.system_prompt.distill_prompt`) trains Qwen2.5-Coder-0.5B-Instruct and scores
it on held-out
prompts *without* the system prompt, plus the out-of-distribution suites (IF-Eval-style instruction following,
GSM8K subset). Base and In-Context are the untrained model without and with the prompt (greedy decoding: the same for
every seed). Writes `results/compare.{md,json,png}`; rerunning skips the runs already finished.

    python benchmarks/compare_prompts.py            # docs/results.md's table (about 1.5 hours on 2 cores)
    python benchmarks/compare_prompts.py --quick    # one behaviour, one seed, 4 steps: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opcd.config import RolloutConfig, load_config  # noqa: E402
from opcd.io import write_text as write_atomic  # noqa: E402
from opcd.recipes.pipeline import OOD_DEFAULT  # noqa: E402
from opcd.recipes.system_prompt import PRESET, EvalPlan, distill_prompt  # noqa: E402

LEGS = (ROOT / "opcd" / "assets" / "contexts" / "legs.txt").read_text().strip()
# name: (system prompt, scorer); every behaviour is checkable within the 48-token evaluation budget
PROMPTS = {
    "french": ("Always answer in French, whatever language the question is in.", ["language:fr"]),
    "pirate": ("Start every answer with 'Arr!'.", ["starts_with:Arr!"]),
    "brief": ("Answer in one short sentence of at most 12 words.", ["max_words:12"]),
    "uppercase": ("Write your whole answer in UPPERCASE letters only.", ["uppercase"]),
    "legs": (LEGS, ["number"]),
}
TASK = {  # the task-accuracy prompt trains and tests on its own problems, with room for the worked answer
    "legs": {
        "train": "opcd:legs_train",
        "test": "opcd:legs_test",
        "overrides": ["rollout.max_new_tokens=64"],
        "eval": RolloutConfig(temperature=0.0, max_new_tokens=320),
    }
}
METHODS = {"offpolicy": "Off-policy CD", "opcd": "OPCD"}


def run_cell(out: Path, name: str, method: str, seed: int, steps: int, ood: dict, lr: float) -> dict:
    """One run in a fresh process (a long sweep in one process grows its memory run after run), or its saved result."""
    run = out / "runs" / f"{name}-{method}-seed{seed}"
    if not (run / "results.json").is_file():
        cell = json.dumps(
            {
                "out": str(out),
                "name": name,
                "method": method,
                "seed": seed,
                "steps": steps,
                "ood": list(ood),
                "ood_n": {k: n for k, (n, _) in ood.items()},
                "lr": lr,
            }
        )
        subprocess.run([sys.executable, __file__, "--cell", cell], check=True)
    return _cell(out, name, method, seed, steps, ood, lr)


def _cell(out: Path, name: str, method: str, seed: int, steps: int, ood: dict, lr: float) -> dict:
    run = out / "runs" / f"{name}-{method}-seed{seed}"
    if (run / "results.json").is_file():
        done = json.loads((run / "results.json").read_text())
        saved = (run / "config.toml").read_text()
        if done["steps"] != steps or f"lr = {lr!r}" not in saved:
            raise SystemExit(f"{run} holds a run with other settings (steps/lr): pass another --out")
        return done
    context, scorer = PROMPTS[name]
    task = TASK.get(name, {})
    cfg = load_config(
        None,
        [
            *PRESET,
            "model.lora_rank=0",  # full fine-tuning, as measured (the preset has since chosen LoRA)
            "train.full_rate_kl=0",  # and, as measured, no rate by KL
            "model.student=qwen2.5-coder-0.5b-instruct",
            f"data.prompts={task.get('train', 'opcd:generic_train')}",
            f"data.context={context}",
            f"loss.mode={method}",
            f"train.steps={steps}",
            f"train.lr={lr}",
            f"train.save_every={steps}",
            f"train.seed={seed}",
            f"train.run_dir={run}",
            "train.report_to=none",
            *task.get("overrides", []),
        ],
    )
    plan = EvalPlan(
        scorer=tuple(scorer),
        test_prompts=task.get("test", "opcd:generic_eval"),
        test_max=0 if task else 24,
        rollout=task.get("eval", RolloutConfig(temperature=0.0, max_new_tokens=48)),
        ood=ood,
        keep_weights=False,
        base_cache=str(out / "base"),
        gap=False,  # the table recorded in docs/results.md was measured with the checkers alone
    )
    print(f"== {name} / {method} / seed {seed}", flush=True)
    return distill_prompt(cfg, plan)


def mean_std(values: list[float], seeds_expected: int = 1) -> str:
    values = [100 * v for v in values]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}" + (" (1 seed)" if seeds_expected > 1 else "")
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _done(cells: dict, name: str, method: str, seeds: list[int]) -> list[int]:
    return [s for s in seeds if (name, method, s) in cells]


def table(cells: dict, names: list[str], seeds: list[int]) -> list[str]:
    head = "| system prompt (metric) | Base | In-Context | " + " | ".join(METHODS.values())
    head += " | IF-Eval strict: base → " + " / ".join(METHODS.values()) + " | GSM8K: base → "
    head += " / ".join(METHODS.values()) + " |"
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for name in names:
        if not _done(cells, name, "opcd", seeds):
            continue
        first = cells[(name, "opcd", _done(cells, name, "opcd", seeds)[0])]
        rates = first["rates"]
        row = [f"{name} ({first['metric']}, n={first['test']['n']})", mean_std([list(rates.values())[0]])]
        row.append(mean_std([list(rates.values())[1]]))
        for m in METHODS:
            values = [list(cells[(name, m, s)]["rates"].values())[2] for s in _done(cells, name, m, seeds)]
            row.append(mean_std(values, len(seeds)))
        for suite in ("instructions", "gsm8k"):
            base = 100 * first["ood"][suite]["base"]
            after = []
            for m in METHODS:
                measured = [s for s in _done(cells, name, m, seeds) if suite in cells[(name, m, s)]["ood"]]
                after.append(mean_std([cells[(name, m, s)]["ood"][suite]["student"] for s in measured]))
            row.append(f"{base:.1f} → " + " / ".join(after))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def plot(cells: dict, names: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opcd.core.metrics import read_metrics

    names = [n for n in names if _done(cells, n, "opcd", seeds)]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.2))
    labels = ["Base", "In-Context", *METHODS.values()]
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        heights, errors = [], []
        for name in names:
            if j < 2:
                values = [list(cells[(name, "opcd", _done(cells, name, "opcd", seeds)[0])]["rates"].values())[j]]
            else:
                method = list(METHODS)[j - 2]
                values = [
                    list(cells[(name, method, s)]["rates"].values())[2] for s in _done(cells, name, method, seeds)
                ]
            heights.append(100 * statistics.mean(values) if values else 0)
            errors.append(100 * statistics.stdev(values) if len(values) > 1 else 0)
        xs = [i + (j - len(labels) / 2 + 0.5) * width for i in range(len(names))]
        bars.bar(xs, heights, width, yerr=errors, label=label, capsize=2)
    bars.set_xticks(range(len(names)), names)
    bars.set_ylabel("adherence / accuracy without the prompt (%)\n(In-Context: with it)")
    bars.set_ylim(0, 105)
    bars.legend(fontsize=8)
    for name in names:
        for s in _done(cells, name, "opcd", seeds):
            rows = read_metrics(Path(cells[(name, "opcd", s)]["run_dir"]) / "metrics.jsonl")
            curves.plot(
                [r["step"] for r in rows],
                [r["kl/reverse_full"] for r in rows],
                alpha=0.8,
                label=name if s == seeds[0] else None,
                color=f"C{names.index(name)}",
            )
    curves.set_xlabel("OPCD step")
    curves.set_ylabel("reverse KL to the teacher (nats/token)")
    curves.set_yscale("log")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="french only, one seed, 4 steps, small OOD")
    p.add_argument("--out", default=str(ROOT / "runs" / "compare"), help="run directories and cached scores")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where compare.{md,json,png} go")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-5, help="preset: 1e-5 for 20 steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ood-all-seeds", action="store_true", help="out-of-distribution suites for every seed")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    p.add_argument("--report-only", action="store_true", help="tables and plot from the runs finished so far")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one run, in this process
    args = p.parse_args()
    if args.cell:
        c = json.loads(args.cell)
        suites = {k: (c["ood_n"][k], OOD_DEFAULT[k][1]) for k in c["ood"]}
        _cell(Path(c["out"]), c["name"], c["method"], c["seed"], c["steps"], suites, c["lr"])
        return
    names, seeds, steps, ood = args.prompts, args.seeds, args.steps, dict(OOD_DEFAULT)
    ood["instructions"] = (60, OOD_DEFAULT["instructions"][1])  # the suite's first 60: what the table was measured on
    if args.quick:
        names, seeds, steps = ["french"], [0], 4
        ood = {k: (10, r) for k, (_, r) in OOD_DEFAULT.items()}
    out, results = Path(args.out + ("-quick" if args.quick else "")), Path(args.results)
    began = time.time()
    cells = {}
    for seed in seeds:  # every prompt's first seed before any second seed: a partial run still covers all prompts
        for name in names:
            for method in METHODS:
                if args.report_only:
                    done = out / "runs" / f"{name}-{method}-seed{seed}" / "results.json"
                    if done.is_file():
                        cells[(name, method, seed)] = json.loads(done.read_text())
                    continue
                # the OOD suites cost as much as training here: measured on the first seed only (--ood-all-seeds)
                suites = ood if (seed == seeds[0] or args.ood_all_seeds) else {}
                cells[(name, method, seed)] = run_cell(out, name, method, seed, steps, suites, args.lr)
    minutes = (time.time() - began) / 60
    lines = table(cells, names, seeds)
    command = "python benchmarks/compare_prompts.py" + (" --quick" if args.quick else "")
    train_min = sum(c["train_seconds"] for c in cells.values()) / 60
    run_min = sum(c["seconds"] for c in cells.values()) / 60
    footer = [
        "",
        f"`{command}`: Qwen2.5-Coder-0.5B-Instruct, {steps} steps × 8 prompts, lr {args.lr:g}, seeds {seeds}; "
        "mean ± std over seeds "
        f"(Base and In-Context are greedy, one value). Out-of-distribution columns: "
        f"{'every seed' if args.ood_all_seeds else f'seed {seeds[0]} only'}. "
        f"Wall time of the {len(cells)} runs: {run_min:.0f} min (training {train_min:.0f} min; this invocation "
        f"{minutes:.0f} min).",
    ]
    print("\n".join(lines + footer))
    results.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    write_atomic(results / f"compare{suffix}.md", "\n".join(lines + footer) + "\n")
    flat = {f"{n}/{m}/seed{s}": {k: v for k, v in c.items()} for (n, m, s), c in cells.items()}
    write_atomic(results / f"compare{suffix}.json", json.dumps(flat, indent=1))
    plot(cells, names, seeds, results / f"compare{suffix}.png")


if __name__ == "__main__":
    main()
