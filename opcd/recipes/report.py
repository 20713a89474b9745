"""What `opcd distill-prompt` (and the recipes on top of the pipeline) write for people: `report.md`'s tables and
`training.png`. The numbers come from `pipeline`; this module only lays them out."""

from __future__ import annotations

from pathlib import Path

from opcd.io import pyplot, save_figure

METHOD_NAMES = {"opcd": "OPCD", "offpolicy": "Off-policy distillation", "sft": "SFT on teacher samples"}
BASE, IN_CONTEXT = "Base, without the prompt", "In-context: base with the prompt"


def plot(rows: list[dict], results: dict, path: Path, validation: dict) -> None:
    """The reverse KL (or loss) over steps with the validation scores, and the three models' test rates."""
    metric = results["metric"]
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    key = "kl/reverse_full" if rows and "kl/reverse_full" in rows[0] else "loss/value"
    left.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o")
    left.set_xlabel("step")
    left.set_ylabel("reverse KL to the teacher (nats/token)" if key.startswith("kl") else "loss")
    left.set_title("training")
    left.grid(alpha=0.3)
    if validation:  # the selection's scores, checkpoint by checkpoint
        twin = left.twinx()
        steps = sorted(validation)
        if metric == "context gap":  # validate() gives minus the gap
            twin.plot(steps, [-validation[s] for s in steps], marker="s", color="#e07b39")
            twin.set_ylabel("validation gap (nats/token)", color="#e07b39")
        else:
            twin.plot(steps, [100 * validation[s] for s in steps], marker="s", color="#e07b39")
            twin.set_ylabel(f"validation {metric} (%)", color="#e07b39")
            twin.set_ylim(0, 105)
    if results["rates"]:
        names, values = zip(*results["rates"].items(), strict=True)
        right.barh(names, [100 * v for v in values], color=["#999", "#4a90d9", "#e07b39"][: len(values)])
        right.set_xlabel(f"{metric} on held-out prompts (%)")
        right.set_xlim(0, 100)
        right.invert_yaxis()
    else:  # the gap alone: both directions, base and student
        gap, labels = results["gap"], ["reverse KL, own answers", "extra NLL, teacher's answers"]
        for offset, (who, color) in enumerate((("base", "#999"), ("student", "#e07b39"))):
            values = [gap[who]["reverse_kl"], gap[who]["extra_nll"]]
            right.barh([i + 0.4 * offset for i in range(2)], values, height=0.4, color=color, label=who)
        right.set_yticks([0.2, 1.2], labels)
        right.set_xlabel("context gap on held-out prompts (nats/token)")
        right.legend()
        right.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)


def report(results: dict, answers: list[tuple[str, str, str]]) -> str:
    """`report.md`: the three models' rates, the out-of-distribution change, the KL, and answers before/after."""
    metric = results["metric"]
    lines = [
        f"# opcd distill-prompt: {results['method']}",
        "",
        f"Context distilled into `{results['model']}`: {results['context']!r}",
        f"Measured with {scored_with(results)} on {results['test']['n']} held-out prompts "
        f"(`{results['test']['prompts']}`). Checkpoint: step {results['checkpoint']['step']}, "
        f"{results['checkpoint']['rule']}.",
        "",
    ]
    if results["rates"]:
        lines += [
            f"| model | {metric} | cut at the token budget |",
            "|---|---|---|",
            *[f"| {name} | {rate:.1%} | {results['truncated'][name]:.0%} |" for name, rate in results["rates"].items()],
            "",
        ]
    if results.get("gap"):
        lines += gap_table(results["gap"], results["test"]["n"])
    if results["ood"]:
        lines += ood_table(results["ood"])
    if results["kl_first"] is not None:
        samples = "the teacher's samples" if results["method"] in ("offpolicy", "sft") else "the student's own samples"
        lines.append(
            f"Reverse KL of the student to the teacher on {samples}: step 1 {results['kl_first']:.3f} → step "
            f"{results['steps']} {results['kl_last']:.3f} nats/token (`metrics.jsonl`, `training.png`)."
        )
    lines.append(
        f"Training steps: {results['train_seconds']:.0f} s in all; this invocation: {results['seconds']:.0f} s "
        "(a rerun reuses the steps and evaluations already done)."
    )
    if answers:
        lines += ["", "## Held-out answers without the prompt: base → student", ""]
        for prompt, before, after in answers[:6]:
            lines += [f"- **{prompt}**", f"  - base: {before!r}", f"  - student: {after!r}"]
    return "\n".join(lines) + "\n"


def ood_table(ood: dict) -> list[str]:
    """The suites' rates for the base, the in-context teacher (when asked) and the student, then like with like."""
    teacher = all("in_context" in r for r in ood.values())
    lines = [
        "Out of distribution: base and student without any context"
        + (", the in-context teacher with the prompt:" if teacher else ":"),
        "",
        f"| suite | base |{' in-context |' if teacher else ''} student | student − base |",
        "|---|---|---|---|" + ("---|" if teacher else ""),
    ]
    for name, r in ood.items():
        middle = f" {r['in_context']:.1%} |" if teacher else ""
        lines.append(f"| {name} ({r['n']}) | {r['base']:.1%} |{middle} {r['student']:.1%} | {_minus_base(r)} |")
    lines.append("")
    if any("minus_base" in r for r in ood.values()):
        lines += [
            "The bracket is a 95 % interval for the difference, by a paired bootstrap over the suite's items: a "
            "difference whose interval holds 0 is within the suite's noise.",
            "",
        ]
    for name, r in ood.items():
        if "conflict_split" in r:
            lines += conflict_table(name, r["conflict_split"], r.get("other_minus_base", {}))
    split = {name: r["like_with_like"] for name, r in ood.items() if "like_with_like" in r}
    if split:
        lines += [
            "Like with like: each suite's rate among the answers that show the behaviour (by the checker) and among "
            "those that do not. The student is damaged only where it does worse than the teacher on the same kind "
            "(last column: student − in-context among the answers that show it, in points, with a 95 % bootstrap "
            "interval over the prompts).",
            "",
            "| suite | in-context, shows it | student, shows it | in-context, does not | student, does not | "
            "student − in-context, shows it |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in split.items():
            cells = [_count(s[who][kind]) for kind in ("shows", "not") for who in ("in_context", "student")]
            d = ood[name].get("like_minus_teacher")
            cells.append("–" if d is None else _points(d))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _minus_base(r: dict) -> str:
    """The student's difference from the base in points, with its paired 95 % interval where it was measured."""
    if "minus_base" not in r:  # results written before the interval was measured
        return f"{100 * (r['student'] - r['base']):+.1f} points"
    return _points(r["minus_base"]["student"], " points")


def _points(d: list[float], unit: str = "") -> str:
    """[difference, low, high] as points with the interval: `-4.5 points (-12.0 to +3.0)` for unit " points"."""
    difference, low, high = (100 * v for v in d)
    return f"{difference:+.1f}{unit} ({low:+.1f} to {high:+.1f})"


def conflict_table(name: str, split: dict, other_minus_base: dict) -> list[str]:
    """The instruction suite's prompts that conflict with the behaviour, apart from the others, and each model's
    paired difference from the base on the others."""
    who = [w for w in ("base", "in_context", "student") if w in split["other"]]
    names = {"base": "base", "in_context": "in-context", "student": "student"}
    rows = [
        f"| {part} ({split[part][who[0]][1]} prompts) | " + " | ".join(_count(split[part][w]) for w in who) + " |"
        for part in ("conflicting", "other")
    ]
    return [
        f"The {name} suite's prompts whose instructions conflict with the behaviour (the rule in "
        "`opcd/tasks/conflicts.py`), apart from the others; only the others measure damage:",
        "",
        "| prompts | " + " | ".join(names[w] for w in who) + " |",
        "|---|" + "---|" * len(who),
        *rows,
        "",
        *[
            f"{names[w].capitalize()} − base on the other prompts: {_points(d, ' points')}, a 95 % paired interval."
            for w, d in other_minus_base.items()
        ],
        *([""] if other_minus_base else []),
    ]


def _count(group: list[int]) -> str:
    passes, answers = group
    return f"{passes / answers:.1%} ({passes}/{answers})" if answers else "– (0/0)"


def scored_with(results: dict) -> str:
    parts = [f"`{' '.join(results['scorer'])}`"] if results["scorer"] else []
    return " and ".join(parts + (["the context gap"] if results.get("gap") else []))


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def gap_table(gap: dict, n: int) -> list[str]:
    """The context gap of the base model and the student (both without the prompt) to the teacher with it."""
    rows = [(BASE, gap["base"]), ("Student, without the prompt", gap["student"])]
    return [
        f"Context gap to the teacher with the prompt, on the {n} held-out prompts (nats/token; 0 = the teacher):",
        "",
        "| model | reverse KL on its own answers | extra NLL on the teacher's answers |",
        "|---|---|---|",
        *[f"| {name} | {g['reverse_kl']:.4f} | {g['extra_nll']:.4f} |" for name, g in rows],
        f"| share of the gap closed | {_share(gap['closed']['reverse_kl'])} | {_share(gap['closed']['extra_nll'])} |",
        "",
    ]
