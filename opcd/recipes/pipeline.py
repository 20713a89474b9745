"""The one pipeline every recipe runs: evaluate the base model -> train -> select a checkpoint -> evaluate the
student -> report.

A recipe brings a `Yardstick`: how one model scores on the held-out test split, with or without the context, and
(optionally) on a validation split that chooses the checkpoint, never the test split. The pipeline measures the base
model without and with the context, trains (resuming what is there), picks the checkpoint (the last one, or the best
on validation: ties go to the later one), measures that student without the context, runs the out-of-distribution
suites for the base model and the student, and writes `results.json`, `report.md` and `training.png` into the run
directory. Every measurement is cached as it finishes (`opcd.io.cached`), so rerunning the same command after an
interruption resumes training and skips what was already measured.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from opcd.config import Config, RolloutConfig, validate
from opcd.core import models, rundir
from opcd.core.checkpoint import check_resumable, list_checkpoints
from opcd.core.data import shared_context
from opcd.core.gap import closed
from opcd.core.metrics import read_metrics
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import RolloutSource
from opcd.core.train import train
from opcd.errors import OpcdError
from opcd.evaluate import out_of_distribution
from opcd.io import cached, pyplot, save_figure, write_json, write_text
from opcd.recipes.export import write_card
from opcd.tasks.ood import ood_digest
from opcd.versions import software

METHOD_NAMES = {"opcd": "OPCD", "offpolicy": "Off-policy distillation", "sft": "SFT on teacher samples"}
BASE, IN_CONTEXT = "Base, without the prompt", "In-context: base with the prompt"
# the out-of-distribution suites: (items, decoding) each; n = 0 is all items
OOD_DEFAULT = {
    "instructions": (0, RolloutConfig.greedy(128, batch_size=30)),
    "gsm8k": (20, RolloutConfig.greedy(256, batch_size=20)),
}


def student_name(method: str) -> str:
    """How results name the trained model (the third row of every table)."""
    return f"{METHOD_NAMES[method]} student, without the prompt"


class Yardstick(Protocol):
    """How a recipe scores one model."""

    metric: str  # "adherence", "accuracy", "success"
    scorer: list[str]  # what decides a pass, as the report names it
    test: dict  # {"prompts": what the test split is, "n": its size}
    key: dict  # what the test scores depend on besides the model (the cache key)
    validation: str  # the validation split, as the selection rule names it ("" = report the last checkpoint)
    last_rule: str  # how the rule reads when there is no validation split
    validation_key: dict  # what the validation scores depend on besides the model
    renderer: PromptRenderer  # renders the out-of-distribution prompts (the plain chat template)
    gap_key: dict | None  # what the context gap depends on besides the model (None: the gap is not measured)

    def measure(self, model_path: str, *, with_context: bool, label: str) -> dict:
        """The model's summary on the test split: at least {"rate", "n"}."""

    def validate(self, model_path: str, label: str) -> float:
        """The model's score on the validation split, without the context (higher is better)."""

    def gap(self, model_path: str, teacher_samples: list | None) -> dict:
        """The context gap on the test split (`opcd.core.gap`), with the teacher's samples it was measured on."""

    def answers(self, base: dict, student: dict) -> list[tuple[str, str, str]]:
        """(prompt, base answer, student answer) examples for the report; [] for none."""


def best_checkpoint(found: list[tuple[int, Path]], score: Callable[[int, Path], float]) -> tuple[int, Path, dict]:
    """The checkpoint with the best `score(step, path)` (ties: the later one), and every checkpoint's score."""
    rates = {step: score(step, path) for step, path in found}
    best = max(rates, key=lambda s: (rates[s], s))
    return best, dict(found)[best], rates


def weights_mtime(model_dir: Path) -> float:
    """When a checkpoint's weights were written (the model card written beside them later does not count)."""
    return max((p.stat().st_mtime for p in model_dir.glob("*.safetensors")), default=model_dir.stat().st_mtime)


def choose_checkpoint(run: Path, yard: Yardstick) -> tuple[int, Path, dict]:
    """The checkpoint to report: the last, or the best on the validation split (ties: the later one)."""
    found = list_checkpoints(run)
    if not found:
        raise OpcdError(f"{run} has no checkpoint to evaluate")
    if not yard.validation:
        step, path = found[-1]
        return step, path, {"rule": yard.last_rule}

    def score(step: int, path: Path) -> float:
        key = {**yard.validation_key, "checkpoint": str(path), "mtime": weights_mtime(path / "model")}
        return cached(
            run / "eval", f"validation-{step}", key, lambda: yard.validate(str(path / "model"), f"step {step}")
        )

    best, path, rates = best_checkpoint(found, score)
    return best, path, {"rule": f"best on {yard.validation}", "validation_rates": rates}


def measure_ood(model_path: str, cfg: Config, suites: dict, renderer: PromptRenderer) -> dict:
    """The out-of-distribution suites' summaries for one model, asked without any context."""
    model = models.load_model(model_path, cfg.model.dtype, cfg.model.device)
    results = out_of_distribution(model, renderer.tokenizer, renderer, suites, dtype=cfg.model.dtype)
    return {name: r.summary() for name, r in results.items()}


def _cached_ood(where: Path, key: dict, model_path: str, cfg: Config, suites: dict, renderer: PromptRenderer) -> dict:
    """The suites' summaries, cached as `where-DIGEST.json`; {} (nothing measured, nothing cached) for no suites."""
    if not suites:
        return {}
    return cached(where.parent, where.name, key, lambda: measure_ood(model_path, cfg, suites, renderer))


def base_cache_dir(cfg: Config, base_cache: str) -> tuple[Path, dict]:
    """Where the base model's scores are kept, and what their key adds: `base_cache` if given; else, for a packaged
    model (fixed, verified weights), one folder shared by every run (`OPCD_CACHE/scores`), so a second run with the
    same model, prompts and settings measures only the student; else the run's own `eval` folder."""
    if base_cache:
        return Path(base_cache), {}
    weights = models.packaged_identity(cfg.model.student)
    if weights is not None:
        return models.cache_dir() / "scores", {"weights": weights}
    return Path(cfg.train.run_dir) / "eval", {}


def _measure_base(cfg: Config, yard: Yardstick, base_cache: str, ood: dict, ood_key: dict, progress: bool) -> dict:
    cache, extra = base_cache_dir(cfg, base_cache)
    base: dict = {}
    for side, with_context in (("without", False), ("with", True)) if yard.scorer else ():
        base[side] = cached(
            cache,
            f"base-{side}",
            {**yard.key, **extra},
            lambda with_context=with_context, side=side: yard.measure(
                cfg.model.student, with_context=with_context, label=f"base {side} the prompt"
            ),
        )
    if yard.gap_key is not None:
        base["gap"] = cached(cache, "base-gap", {**yard.gap_key, **extra}, lambda: yard.gap(cfg.model.student, None))
    base["ood"] = _cached_ood(cache / "base-ood", {**ood_key, **extra}, cfg.model.student, cfg, ood, yard.renderer)
    if yard.scorer and base["with"]["rate"] <= base["without"]["rate"] and progress:
        print(
            f"opcd: warning: the base model scores {base['without']['rate']:.0%} without the prompt and "
            f"{base['with']['rate']:.0%} with it: the prompt does not help this model on these prompts"
        )
    return base


def gap_summary(base: dict, student: dict) -> dict:
    """The two models' gaps (without the teacher's samples) and the share of the base's gap the student closed."""
    strip = {"teacher_samples", "responses", "teacher_responses"}
    return {
        "base": {k: v for k, v in base.items() if k not in strip},
        "student": {k: v for k, v in student.items() if k not in strip},
        "closed": {k: closed(base[k], student[k]) for k in ("reverse_kl", "extra_nll")},
    }


def preflight(cfg: Config) -> None:
    """The checks that need no model, before a recipe reads its splits: the config, and the run directory's
    checkpoints (made with this config, or none)."""
    validate(cfg)
    check_resumable(Path(cfg.train.run_dir), cfg)


def distill_and_measure(
    cfg: Config,
    yard: Yardstick,
    *,
    ood: dict,
    keep_weights: bool = True,
    base_cache: str = "",
    source: RolloutSource | None = None,
    progress: bool = True,
    private_context: bool = False,
) -> dict:
    """Evaluate, train, select, evaluate, report; returns (and writes) the results. Rerunning resumes.

    `ood`: the out-of-distribution suites ({} = none); `keep_weights=False` deletes the checkpoints once the results
    are written (sweeps on a small disk); `base_cache`: where base-model scores are kept for reuse ("" =
    `base_cache_dir`'s choice); `private_context`: the model card gives the context's digest, not its text."""
    preflight(cfg)
    with rundir.hold(Path(cfg.train.run_dir), progress):  # no other run writes here while this one measures
        return _distill_and_measure(cfg, yard, ood, keep_weights, base_cache, source, progress, private_context)


def _distill_and_measure(
    cfg: Config,
    yard: Yardstick,
    ood: dict,
    keep_weights: bool,
    base_cache: str,
    source: RolloutSource | None,
    progress: bool,
    private_context: bool,
) -> dict:
    began = time.time()
    run = Path(cfg.train.run_dir)
    ood_key = {
        "model": cfg.model.student,
        "ood": str(ood),
        "dtype": cfg.model.dtype,
        "items": ood_digest(ood.get("instructions", (0, None))[0]),
    }
    base = _measure_base(cfg, yard, base_cache, ood, ood_key, progress)
    run = train(cfg, source, resume="if-possible", progress=progress)
    step, path, selection = choose_checkpoint(run, yard)
    student_key = {**yard.key, "checkpoint": str(path), "mtime": weights_mtime(path / "model")}
    student: dict = {}
    if yard.scorer:
        student = cached(
            run / "eval",
            "student",
            student_key,
            lambda: yard.measure(str(path / "model"), with_context=False, label=f"student step {step}"),
        )
    key = {**ood_key, **student_key}
    ood_student = _cached_ood(run / "eval" / "student-ood", key, str(path / "model"), cfg, ood, yard.renderer)
    gap, measured_gap = None, {}
    if yard.gap_key is not None:
        samples = base["gap"]["teacher_samples"]
        gap_key = {**yard.gap_key, "checkpoint": str(path), "mtime": student_key["mtime"]}
        measured_gap = cached(run / "eval", "student-gap", gap_key, lambda: yard.gap(str(path / "model"), samples))
        gap = gap_summary(base["gap"], measured_gap)
    rows = read_metrics(run / "metrics.jsonl")
    measured = {}
    if yard.scorer:
        measured = {BASE: base["without"], IN_CONTEXT: base["with"], student_name(cfg.loss.mode): student}
    results = {
        "model": cfg.model.student,
        "method": cfg.loss.mode,
        "run_dir": str(run),
        "context": shared_context(cfg.data),
        "scorer": yard.scorer,
        "metric": yard.metric,
        "test": yard.test,
        "checkpoint": {"step": step, **selection},
        "rates": {name: m["rate"] for name, m in measured.items()},
        "truncated": {name: m.get("truncated", 0.0) for name, m in measured.items()},
        "gap": gap,
        "private_context": private_context,
        "ood": {
            name: {"base": base["ood"][name]["rate"], "student": s["rate"], "n": s["n"]}
            for name, s in ood_student.items()
        },
        "kl_first": rows[0].get("kl/reverse_full") if rows else None,
        "kl_last": rows[-1].get("kl/reverse_full") if rows else None,
        "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": sum(r["time/step"] for r in rows),
        "seconds": time.time() - began,
        "software": software(),
    }
    plot(rows, results, run / "training.png", selection.get("validation_rates", {}))
    write_json(run / "results.json", results)
    if not keep_weights:  # only now: until results.json exists, a rerun resumes from these
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    else:  # the selected checkpoint says what it is (opcd export ships it)
        write_card(run, path / "model", results, private_context)
    before, after = (base["without"], student) if yard.scorer else (base["gap"], measured_gap)
    write_text(run / "report.md", report(results, yard.answers(before, after)))
    return results


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
        lines += [
            "Out of distribution (without any context):",
            "",
            "| suite | base | student | change |",
            "|---|---|---|---|",
        ]
        for name, r in results["ood"].items():
            lines.append(
                f"| {name} ({r['n']}) | {r['base']:.1%} | {r['student']:.1%} | "
                f"{100 * (r['student'] - r['base']):+.1f} points |"
            )
        lines.append("")
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
