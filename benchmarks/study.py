"""The defaults study: each behaviour distilled with each setting (cell), two seeds, adherence against retention.

Each (behaviour, cell, seed) is one `opcd distill-prompt` run on the packaged Qwen2.5-Coder-0.5B (the CPU preset's
20 steps × 8 prompts, 32-token rollouts, 2 warmup steps, pinned to the preset the study started from, full
fine-tuning at lr 1e-5 (`FULL`), then the cell's overrides), scored on the 24
held-out prompts (`opcd:generic_eval`) and the out-of-distribution suites (120 instruction prompts, 100 held-out GSM8K
problems) for the base, the in-context teacher and the student. Fixed before the runs: the behaviours, the cells,
seeds 0 and 1, and the columns below. Behaviours and cells are added, never changed once measured.

    .venv/bin/python benchmarks/study.py                               # everything (about 8 min a run)
    .venv/bin/python benchmarks/study.py --behaviours numbered --cells full --seeds 0

A run directory that already holds `results.json` is read, not run again. Writes
`benchmarks/results/study.{md,json,png}`. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.study_goal import goal_rows  # noqa: E402
from opcd.core.data import Example  # noqa: E402
from opcd.core.models import cache_dir  # noqa: E402
from opcd.recipes.stats import like_interval, paired_interval, split_by_behaviour  # noqa: E402
from opcd.tasks import build_scorer  # noqa: E402
from opcd.tasks.conflicts import conflicts  # noqa: E402
from opcd.tasks.ood import instruction_items  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BEHAVIOURS = {  # name: (system prompt, checker)
    "french": ("Always answer in French, whatever language the question is in.", "language:fr"),
    # a structured format that leaves arithmetic alone: GSM8K under it measures damage, not the behaviour's cost
    "numbered": (
        "Always answer as a numbered list: start with '1.' and put each point on its own line.",
        "starts_with:1.",
    ),
    # added after the first two were measured, before any of their runs: a length limit and a rare first token
    "brief": ("Answer in one short sentence of at most 12 words.", "max_words:12"),
    "arr": ("Start every answer with 'Arr!'.", "starts_with:Arr!"),
    # added after the study had chosen its preset, before any run of its own: a persona no checker scores, measured
    # by the context gap alone (the practitioner's path's pirate, examples/persona/persona.txt)
    "persona": ((ROOT / "examples" / "persona" / "persona.txt").read_text().strip(), None),
    # added 2026-12-04, before any run of its own: the leg-counting task prompt, scored by accuracy on its own 60 test
    # problems (greedy, 320 tokens) and trained on its own problems with 128-token rollouts, twice compare_prompts.py's
    # 64, which cut the format's worked answers
    "legs": ((ROOT / "opcd" / "assets" / "contexts" / "legs.txt").read_text().strip(), "number"),
    # added 2026-12-05 (04:34), before any run of its own: the null test's neutral context through the whole yardstick,
    # to see what the preset's KL plateau (0.006-0.013 nats/token at steps 16-20 of the null test) costs on the suites.
    # Fixed now: it holds if 0 lies inside the student's paired 95 % interval against the base on GSM8K and on the
    # instruction suite, on both seeds. No checker; its gap column is the ~0.001 nats/token the context moves
    "null": ("You are a helpful assistant.", None),
}
WHO = ("base", "in_context", "student")  # the three models each suite scores
TASKS = {  # a behaviour that is a task: its own prompts, test problems and budgets (options, overrides)
    "null": ([], ["loss.min_kl=0"]),  # not a task: the guard against a context that changes nothing, turned off
    "legs": (
        [
            "--prompts",
            "opcd:legs_train",
            "--test-prompts",
            "opcd:legs_test",
            "--test-max",
            "0",
            "--max-new-tokens",
            "320",
        ],
        ["rollout.max_new_tokens=128"],
    ),
}
# the preset the study started from (`distill-prompt`'s default until the study chose LoRA rank 8 at lr 3e-4, and
# the rate by KL), under every cell, so that a cell means the same runs whatever the preset is now
FULL = ["model.lora_rank=0", "train.lr=1e-5", "train.full_rate_kl=0"]
CELLS = {
    "full": [],  # full fine-tuning at lr 1e-5: ε 1e-8, grad norm clipped at 1 (called `default` until the switch)
    "eps 1e-4": ["train.adam_eps=1e-4", "train.max_grad_norm=0"],  # the null test's fix
    # added after the first two were measured, before any of their runs. LoRA's rate is 10x full fine-tuning's (the
    # usual ratio at a fixed alpha, here 32), the same at both ranks; the lower rate runs twice the steps
    "lora r8": ["model.lora_rank=8", "train.lr=1e-4"],
    "lora r64": ["model.lora_rank=64", "train.lr=1e-4"],
    "lr 5e-6 x40": ["train.lr=5e-6", "train.steps=40"],
    "mixed": ["loss.teacher_share=0.5"],  # the teacher answers half of step 1's prompts, a share falling to 0
    # added after `lora r8` had learned the list but no French (0 %, 6-9 % of the gap): 3x its rate
    "lora r8 lr3e-4": ["model.lora_rank=8", "train.lr=3e-4"],
    # added once that cell had become the preset: the preset with mixed rollouts, which the README advises for "Arr!"
    "lora r8 lr3e-4 mixed": ["model.lora_rank=8", "train.lr=3e-4", "loss.teacher_share=0.5"],
    # added 2026-12-04 (evening), before any of its runs: the preset with twice the steps, for the behaviours it
    # under-learned at 20 (brief: 86 % of the teacher's adherence; persona: 45-53 % of the KL gap)
    "lora r8 lr3e-4 x40": ["model.lora_rank=8", "train.lr=3e-4", "train.steps=40"],
    # added 2026-12-04 (night), before any of its runs, after the null test had held (2.1x on seed 0) with the preset
    # at Adam's eps 3e-4: does the preset still learn with it? The clip off, as in `eps 1e-4`
    "lora r8 lr3e-4 eps3e-4": ["model.lora_rank=8", "train.lr=3e-4", "train.adam_eps=3e-4", "train.max_grad_norm=0"],
    # added 2026-12-04 (late night), before any of its runs: the preset with twice the prompts per step, the same
    # compute as `x40` spent on less noisy steps instead of more of them (the paper's steps hold 128 prompts)
    "lora r8 lr3e-4 p16": [
        "model.lora_rank=8",
        "train.lr=3e-4",
        "train.prompts_per_step=16",
        "train.micro_batch_size=16",
    ],
    # added 2026-12-05 (00:55), before any of its runs, after `x40` had closed 60-69 % of the persona's gap (20 steps:
    # 45-53 %): does the gap keep closing with steps? Run on the persona only
    "lora r8 lr3e-4 x80": ["model.lora_rank=8", "train.lr=3e-4", "train.steps=80"],
    # added 2026-12-05 (01:42), before any of its runs: `x40` with the step chosen on the 40 validation prompts
    # (`opcd:generic_val`, written today, disjoint from the training and test prompts) from checkpoints 10, 20, 30 and
    # 40: the earliest within one standard error of the best adherence (`--select earliest`), so that a behaviour
    # learned by step 20 keeps what the later steps cost. Run on the checker behaviours with generic prompts (french,
    # numbered, brief); the persona's validation score would be its gap
    "lora r8 lr3e-4 x40 val": ["model.lora_rank=8", "train.lr=3e-4", "train.steps=40"],
    # added 2026-12-05 (04:22), before any of their runs, with the null test's cells of the same names: the preset's
    # rate falling to 0 by step 20 (cosine after the 2 warmup steps), at the preset's peak and at twice it (the same
    # summed rate as the preset). Fixed before the runs: both run French; the one that holds the null test (steps 16-20
    # at most 3x step 1, both seeds) with the higher mean French adherence (tie: 3e-4) then runs the list and the word
    # limit, and the persona if time allows. It replaces the preset only if it holds the null test, keeps French at
    # 90 % of the teacher on both seeds, and meets at least as many goal criteria as the preset on what it ran
    "lora r8 lr3e-4 cosine": ["model.lora_rank=8", "train.lr=3e-4", "train.lr_schedule=cosine"],
    "lora r8 lr6e-4 cosine": ["model.lora_rank=8", "train.lr=6e-4", "train.lr_schedule=cosine"],
    # added 2026-12-05 (04:44), before any of their runs, after neither cosine cell had held the null test (4.5-27x;
    # French was not run): each step's rate times the share of its gradient that its two micro-batches agree on
    # (`train.lr_by_signal`), at the preset's rate and at 1e-3. The same rule as for the cosine cells decides which
    # runs past French and whether it replaces the preset
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
    # added 2026-12-05 (05:55), before its runs, with the null test's cell of the same name, after the rate by signal
    # had held the null test at 3e-4 and learned no French in 20 steps there (mean share 0.25-0.30): twice that rate for
    # twice the steps, about the preset's summed rate. Fixed now: it runs French (40 steps) only if it holds the null
    # test (at most 3x over its last 5 steps, both seeds); it cannot replace the preset on French alone
    "lora r8 lr6e-4 signal x40": [
        "model.lora_rank=8",
        "train.lr=6e-4",
        "train.steps=40",
        "train.lr_by_signal=true",
        "train.micro_batch_size=4",
    ],
    # added 2026-12-05 (07:01), before their runs, with the null test's cells of the same names: the preset, its rate
    # times min(1, step KL / kappa) (`train.full_rate_kl`; Polyak's rule for a loss whose least value is 0), kappa 0.01
    # (10x loss.min_kl) and 0.02 (below every step KL, min 0.023, of the study's preset behaviour runs' first 20
    # steps, so those runs are unchanged by it). Fixed now: the smaller kappa that holds the null test (at most 3x over
    # its last 5 steps, both seeds) runs the study's `null` (its rule) and French; it replaces the preset if French's
    # step KLs equal the preset's (then the other behaviours' runs are the preset's) and `null` holds its rule
    "lora r8 lr3e-4 klrate1e-2": ["model.lora_rank=8", "train.lr=3e-4", "train.full_rate_kl=0.01"],
    "lora r8 lr3e-4 klrate2e-2": ["model.lora_rank=8", "train.lr=3e-4", "train.full_rate_kl=0.02"],
    # added 2026-12-05 (07:42), before its runs, with the null test's cell of the same name: full fine-tuning with the
    # rate by KL below 0.1. Fixed now: it runs French only if it holds the null test (at most 3x, both seeds); it is
    # guidance for full fine-tuning (docs/methods.md), not a candidate for the preset (LoRA)
    "klrate 1e-1": ["train.full_rate_kl=0.1"],
}
CELL_OPTIONS = {"lora r8 lr3e-4 x40 val": ["--validation-prompts", "opcd:generic_val", "--select", "earliest"]}


def _gsm8k_minus_base(r: dict, run_dir: Path) -> list[float] | None:
    """The student's GSM8K difference from the base with its paired 95 % interval: from `results.json` where the run
    wrote it; for runs measured before it did, from the stored per-problem answers (the student's in the run's
    `eval` folder, the base's in the shared score cache, which must hold exactly one file for the suite)."""
    gsm = r["ood"]["gsm8k"]
    if "minus_base" in gsm:
        return gsm["minus_base"]["student"]
    # one file per suite (student-ood-gsm8k-*), or, for runs before the scores were cached per suite, one per run
    found = [json.loads(p.read_text()) for p in sorted((run_dir / "eval").glob("student-ood-*.json"))]
    student = [f["gsm8k"] if "gsm8k" in f else f for f in found if "gsm8k" in f or f.get("n") == gsm["n"]]
    base = [
        p for p in (cache_dir() / "scores").glob("base-ood-gsm8k-*.json") if json.loads(p.read_text())["n"] == gsm["n"]
    ]
    if len(student) != 1 or len(base) != 1 or student[0]["rate"] != gsm["student"]:
        return None  # not one file each, or not the answers this run's results were computed from
    return paired_interval(json.loads(base[0].read_text())["passed"], student[0]["passed"])


def _other_minus_base(r: dict, run_dir: Path, check: str | None) -> list[float] | None:
    """The student's difference from the base on the non-conflicting instructions, with its paired 95 % interval:
    from `results.json` where the run wrote it; for runs measured before, from the stored per-prompt answers (the
    student's in the run's `eval` folder, the base's in the shared score cache, which must hold exactly one file of
    the same rate)."""
    instr = r["ood"]["instructions"]
    if "other_minus_base" in instr:
        return instr["other_minus_base"]["student"]
    if check is None or "conflict_split" not in instr:
        return None
    student = _stored(run_dir / "eval", "student-ood-instructions", lambda f: f["rate"] == instr["student"])
    base = _stored(cache_dir() / "scores", "base-ood-instructions", lambda f: f["rate"] == instr["base"])
    if student is None or base is None:
        return None
    keep = [not conflicts([check], item) for item in instruction_items(120)]
    pick = [i for i, k in enumerate(keep) if k]
    return paired_interval([base["passed"][i] for i in pick], [student["passed"][i] for i in pick])


def _like_minus_teacher(r: dict, run_dir: Path, check: str | None) -> list[float] | None:
    """Like with like: the student's instruction rate among its answers that show the behaviour minus the teacher's,
    with a 95 % bootstrap interval over the prompts: from `results.json` where the run wrote it; for runs measured
    before, from the stored answers (the student's in the run's `eval` folder; the teacher's in the shared score cache,
    the one file whose rate and like-with-like counts are the run's)."""
    instr = r["ood"]["instructions"]
    if "like_minus_teacher" in instr:
        return instr["like_minus_teacher"]
    like = instr.get("like_with_like")
    if check is None or like is None:
        return None
    shows = build_scorer([check])
    flags = lambda f: [bool(shows(x, Example([], "", "ood"))) for x in f["responses"]]  # noqa: E731
    same = lambda who: lambda f: f["rate"] == instr[who] and split_by_behaviour(f["passed"], flags(f)) == like[who]  # noqa: E731
    student = _stored(run_dir / "eval", "student-ood-instructions", same("student"))
    teacher = _stored(cache_dir() / "scores", "base-ood-in-context-instructions", same("in_context"))
    if student is None or teacher is None:
        return None
    return like_interval(teacher["passed"], flags(teacher), student["passed"], flags(student))


def _stored(folder: Path, prefix: str, match: Callable[[dict], bool]) -> dict | None:
    """The one stored answer file of the 120 instruction prompts in `folder` that `match` accepts, or None (none, or
    more than one)."""
    found = [
        f for f in (json.loads(p.read_text()) for p in sorted(folder.glob(f"{prefix}-*.json"))) if f.get("n") == 120
    ]
    found = [f for f in found if match(f)]
    return found[0] if len(found) == 1 else None


def run_cell(behaviour: str, name: str, seed: int, work: Path) -> dict:
    run_dir = work / f"{behaviour}-{name.replace(' ', '_')}-s{seed}"
    prompt, check = BEHAVIOURS[behaviour]
    options, overrides = TASKS.get(behaviour, ([], []))
    if not (run_dir / "results.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [
            str(ROOT / ".venv" / "bin" / "opcd"), "distill-prompt", "--system-prompt", prompt,
            *(["--check", check] if check else []),
            *options, *CELL_OPTIONS.get(name, []), "--run-dir", str(run_dir),
            *overrides, f"train.seed={seed}", *FULL, *CELLS[name],
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # 2.5 GB each; the results are what is kept
    r = json.loads((run_dir / "results.json").read_text())
    return summary(r) | {
        "gsm8k_minus_base": _gsm8k_minus_base(r, run_dir),
        "other_minus_base": _other_minus_base(r, run_dir, check),
        "instructions_minus_base": r["ood"]["instructions"].get("minus_base", {}).get("student"),
        "like_minus_teacher": _like_minus_teacher(r, run_dir, check),
    }


def _rate(pair: list[int]) -> float:
    return pair[0] / pair[1] if pair[1] else float("nan")


def summary(r: dict) -> dict:
    """One run's columns; a behaviour without a checker (the persona) has no adherence, no conflict split and no like
    with like (None), only the context gap."""
    instr, gsm = r["ood"]["instructions"], r["ood"]["gsm8k"]
    other = instr["conflict_split"]["other"] if "conflict_split" in instr else None
    like = instr.get("like_with_like")
    closed = r["gap"]["closed"] if r.get("gap") else {}
    return {
        "adherence": r["rates"].get("OPCD student, without the prompt"),
        "teacher": r["rates"].get("In-context: base with the prompt"),
        "gap_kl": closed.get("reverse_kl"),
        "gap_nll": closed.get("extra_nll"),
        "instructions": {k: instr[k] for k in WHO},
        "other": other and {k: _rate(other[k]) for k in WHO},
        "other_n": other and other["base"][1],
        "like_shows": like and {k: _rate(like[k]["shows"]) for k in ("in_context", "student")},
        "gsm8k": {k: gsm[k] for k in WHO},
        "kl": [r["kl_first"], r["kl_last"]],
    }


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "study.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "Adherence: the student without the prompt on 24 held-out prompts (legs: accuracy on its 60 test problems; "
        "greedy; the in-context teacher in brackets). Out of distribution: base / in-context teacher / student. "
        "Like with like: instruction following among the answers that show the behaviour, teacher / student (– where "
        "none does), then (where the answers are kept) student − teacher in points with a 95 % bootstrap interval "
        "over the prompts. Instructions, for a behaviour without a conflict rule: then the student − base in points "
        "with a 95 % paired bootstrap interval over the 120 prompts, where the run recorded it. Non-conflicting: base "
        "/ teacher / student, then (where the per-prompt answers are kept) the "
        "student − base in points with a 95 % paired bootstrap interval over those prompts. GSM8K student − base: "
        "points, with a 95 % paired bootstrap interval over the 100 problems.",
        "",
        "| behaviour | cell | seed | adherence (teacher) | gap closed (KL / NLL) | KL first → last step | "
        "instructions (120) | non-conflicting | like with like | GSM8K (100) | GSM8K student − base (95 %) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in sorted(results.items()):
        behaviour, cell, seed = key.split("/")
        trio = " / ".join(f"{s['instructions'][k]:.1%}" for k in WHO)
        other = " / ".join(f"{s['other'][k]:.1%}" for k in WHO) if s["other"] else "–"
        if not s["other"] and s.get("instructions_minus_base"):  # no conflict rule: the whole suite's interval
            trio += f" ({_interval(s['instructions_minus_base'])})"
        if s.get("other_minus_base"):
            other += f" ({_interval(s['other_minus_base'])})"
        gsm = " / ".join(f"{s['gsm8k'][k]:.0%}" for k in WHO)
        like = " / ".join(_pct(s["like_shows"][k]) for k in ("in_context", "student")) if s["like_shows"] else "–"
        if s.get("like_minus_teacher"):
            like += f" ({_interval(s['like_minus_teacher'])})"
        adherence = "–" if s["adherence"] is None else f"{s['adherence']:.0%} ({s['teacher']:.0%})"
        gap = " / ".join("–" if s.get(k) is None else f"{s[k]:.0%}" for k in ("gap_kl", "gap_nll"))
        lines.append(
            f"| {behaviour} | {cell} | {seed} | {adherence} | {gap} | {s['kl'][0]:.3f} → {s['kl'][1]:.3f} | "
            f"{trio} | {other} | {like} | {gsm} | {_interval(s.get('gsm8k_minus_base'))} |"
        )
    lines += ["", *goal_rows(results)]
    (RESULTS / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results)


def _pct(rate: float) -> str:
    return "–" if rate != rate else f"{rate:.1%}"  # NaN: no answer showed the behaviour


def _interval(d: list[float] | None) -> str:
    return "–" if d is None else f"{100 * d[0]:+.0f} ({100 * d[1]:+.0f} to {100 * d[2]:+.0f})"


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = matplotlib.colormaps["tab20"]  # one colour a cell: there are more cells than the default cycle's ten

    behaviours = sorted({key.split("/")[0] for key in results})
    fig, axes = plt.subplots(2, len(behaviours), figsize=(5 * len(behaviours), 8), squeeze=False)
    for column, behaviour in enumerate(behaviours):
        top, bottom = axes[0][column], axes[1][column]
        mine = {key: s for key, s in sorted(results.items()) if key.startswith(f"{behaviour}/")}
        for i, cell in enumerate(CELLS):  # a cell keeps its colour in every panel
            runs = [s for key, s in mine.items() if key.split("/")[1] == cell]
            if not runs:
                continue
            x = [100 * _x(s) for s in runs]
            y = [100 * (_y(s)["student"] - _y(s)["base"]) for s in runs]
            top.scatter(x, y, color=colour(i), label=cell, s=50, alpha=0.8)
            for k, s in enumerate(runs):  # one column per cell, seeds side by side
                d = s.get("gsm8k_minus_base")
                if d is not None:
                    low, high = 100 * (d[0] - d[1]), 100 * (d[2] - d[0])
                    bottom.errorbar(i + 0.2 * k, 100 * d[0], yerr=[[low], [high]], fmt="o", color=colour(i), capsize=3)
        first = next(iter(mine.values()))
        checked = first["adherence"] is not None
        teacher = (100 * (first["teacher"] if checked else 1), 100 * (_y(first)["in_context"] - _y(first)["base"]))
        top.scatter(*teacher, color="black", marker="*", s=120, label="in-context teacher")
        top.axhline(0, color="grey", lw=0.8)
        lowest = min((100 * _x(s) for s in mine.values()), default=0)  # a gap that grew (`null`) closes below 0
        top.set_xlim(min(-5, lowest - 50), 105)
        top.set_xlabel("adherence without the prompt (%)" if checked else "context gap closed (reverse KL, %)")
        top.set_ylabel(f"{'non-conflicting ' if first['other'] else 'all 120 '}instructions − base (points)")
        gsm = first["gsm8k"]
        bottom.axhline(100 * (gsm["in_context"] - gsm["base"]), color="black", ls="--", lw=0.8, label="teacher")
        bottom.axhline(0, color="grey", lw=0.8)
        bottom.set_xticks(range(len(CELLS)), list(CELLS), rotation=30, fontsize=8)
        bottom.legend(fontsize=8)
        bottom.set_ylabel("GSM8K (100) − base (points, 95 % paired interval)")
        top.set_title(f"{behaviour} (0.5B, one dot per seed)")
        top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "study.png", dpi=120)


def _x(s: dict) -> float:
    """Adherence, or for a behaviour without a checker the share of the context gap closed."""
    return s["gap_kl"] if s["adherence"] is None else s["adherence"]


def _y(s: dict) -> dict:
    """The instruction rates the behaviour leaves alone: the non-conflicting prompts, or all of them without a
    checker (no conflict rule)."""
    return s["other"] or s["instructions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--behaviours", nargs="+", default=list(BEHAVIOURS), choices=list(BEHAVIOURS))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--work", default=str(ROOT / "runs" / "study"), help="where the runs go")
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plot from study.json")
    args = parser.parse_args()
    path = RESULTS / "study.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.report_only:  # each measured run's columns read again from its directory
        for key in results:
            behaviour, cell, seed = key.split("/")
            if (Path(args.work) / f"{behaviour}-{cell.replace(' ', '_')}-s{seed}" / "results.json").exists():
                results[key] = run_cell(behaviour, cell, int(seed), Path(args.work))
        write(results)
        return
    for behaviour in args.behaviours:
        for seed in args.seeds:
            for cell in args.cells:
                results[f"{behaviour}/{cell}/{seed}"] = run_cell(behaviour, cell, seed, Path(args.work))
                write(results)


if __name__ == "__main__":
    main()
