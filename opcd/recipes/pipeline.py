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
from opcd.io import cached, write_json, write_text
from opcd.recipes.export import write_card
from opcd.recipes.report import BASE, IN_CONTEXT, METHOD_NAMES, plot, report
from opcd.recipes.stats import like_interval, paired_interval, passes, split_by_behaviour, unflagged
from opcd.tasks.ood import OodItem, instruction_items, ood_digest
from opcd.versions import software

# the out-of-distribution suites: (items, decoding) each; n = 0 is all items
OOD_DEFAULT = {
    "instructions": (0, RolloutConfig.greedy(128, batch_size=30)),
    "gsm8k": (100, RolloutConfig.greedy(256, batch_size=20)),
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
    select: str  # "best" on validation (ties: the later step) or "earliest" within one standard error of the best
    last_rule: str  # how the rule reads when there is no validation split
    validation_key: dict  # what the validation scores depend on besides the model
    renderer: PromptRenderer  # renders the out-of-distribution prompts (the plain chat template)
    gap_key: dict | None  # what the context gap depends on besides the model (None: the gap is not measured)
    behaviour: Callable[[str], bool] | None  # whether one answer shows the distilled behaviour (None: no checker)
    conflict: Callable[[OodItem], bool] | None  # whether an instruction prompt conflicts with it (None: no rule)

    def measure(self, model_path: str, *, with_context: bool, label: str) -> dict:
        """The model's summary on the test split: at least {"rate", "n"}."""

    def validate(self, model_path: str, label: str) -> float:
        """The model's score on the validation split, without the context (higher is better)."""

    def margin(self, best: float) -> float:
        """One standard error of the validation score `best` (how far below it a checkpoint still counts as good)."""

    def gap(self, model_path: str, teacher_samples: list | None) -> dict:
        """The context gap on the test split (`opcd.core.gap`), with the teacher's samples it was measured on."""

    def answers(self, base: dict, student: dict) -> list[tuple[str, str, str]]:
        """(prompt, base answer, student answer) examples for the report; [] for none."""


def best_checkpoint(
    found: list[tuple[int, Path]],
    score: Callable[[int, Path], float],
    margin: Callable[[float], float] | None = None,
) -> tuple[int, Path, dict]:
    """The checkpoint with the best `score(step, path)` (ties: the later one) or, given `margin`, the earliest whose
    score is within `margin(best)` of the best (fewer updates for as good a score); and every checkpoint's score."""
    rates = {step: score(step, path) for step, path in found}
    if margin is None:
        best = max(rates, key=lambda s: (rates[s], s))
    else:
        top = max(rates.values())
        best = min(s for s, rate in rates.items() if rate >= top - margin(top) - 1e-12)
    return best, dict(found)[best], rates


def weights_mtime(model_dir: Path) -> float:
    """When a checkpoint's weights were written (the model card written beside them later does not count)."""
    return max((p.stat().st_mtime for p in model_dir.glob("*.safetensors")), default=model_dir.stat().st_mtime)


def choose_checkpoint(run: Path, yard: Yardstick) -> tuple[int, Path, dict]:
    """The checkpoint to report: the last, or the best on the validation split (ties: the later one), or the earliest
    within one standard error of that best (`yard.select == "earliest"`)."""
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

    earliest = yard.select == "earliest"
    best, path, rates = best_checkpoint(found, score, yard.margin if earliest else None)
    rule = "the earliest within one standard error of the best" if earliest else "best"
    return best, path, {"rule": f"{rule} on {yard.validation}", "validation_rates": rates}


def measure_ood(model_path: str, cfg: Config, suites: dict, renderer: PromptRenderer, context: str = "") -> dict:
    """The out-of-distribution suites' summaries for one model, asked without any context (or with `context`)."""
    model = models.load_model(model_path, cfg.model.dtype, cfg.model.device)
    results = out_of_distribution(model, renderer.tokenizer, renderer, suites, dtype=cfg.model.dtype, context=context)
    return {name: r.summary() for name, r in results.items()}


def _cached_ood(
    where: Path, key: dict, model_path: str, cfg: Config, suites: dict, renderer: PromptRenderer, context: str = ""
) -> dict:
    """The suites' summaries, each cached on its own as `where-SUITE-DIGEST.json` (so runs asking other suites, such
    as the demo's, reuse it); {} (nothing measured, nothing cached) for no suites."""
    key = {**key, "model": model_path, **({"context": context, "placement": cfg.data.placement} if context else {})}
    out = {}
    for name, spec in suites.items():
        one = {name: spec}
        suite_key = {**key, "suite": name, "spec": str(spec), "items": ood_digest(one)}
        measure = lambda one=one, name=name: measure_ood(model_path, cfg, one, renderer, context)[name]  # noqa: E731
        out[name] = cached(where.parent, f"{where.name}-{name}", suite_key, measure)
    return out


def teacher_model(cfg: Config) -> str:
    """The model that answers with the context: the student's own base, or a separate teacher."""
    return cfg.model.student if cfg.model.teacher in ("frozen", "live", "ema") else cfg.model.teacher


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
    context = shared_context(cfg.data)  # "" when each prompt brings its own: no one in-context teacher to ask
    if context:
        key = {**ood_key, **extra, **_teacher_identity(cfg, yard.renderer, context)}
        where = cache / "base-ood-in-context"
        base["ood_in_context"] = _cached_ood(where, key, teacher_model(cfg), cfg, ood, yard.renderer, context)
    if yard.scorer and base["with"]["rate"] <= base["without"]["rate"] and progress:
        print(
            f"opcd: warning: the base model scores {base['without']['rate']:.0%} without the prompt and "
            f"{base['with']['rate']:.0%} with it: the prompt does not help this model on these prompts"
        )
    return base


def _teacher_identity(cfg: Config, renderer: PromptRenderer, context: str) -> dict:
    """What the in-context teacher's scores depend on besides the model name: its weights (a packaged teacher's
    identity, a local one's write time) and how the context reaches it (a probe prompt rendered in full)."""
    name = teacher_model(cfg)
    weights = models.packaged_identity(name)
    if weights is None and Path(name).is_dir():
        weights = weights_mtime(Path(name))
    probe = renderer.render([{"role": "user", "content": "?"}], context).teacher_ids
    return {"teacher_weights": weights, "teacher_probe": probe}


def ood_results(
    base: dict,
    student: dict,
    behaviour: Callable[[str], bool] | None,
    conflict: Callable[[OodItem], bool] | None = None,
) -> dict:
    """Per suite: base, in-context teacher (when asked) and student rates, each model's difference from the base
    with its paired 95 % interval (`minus_base`); with a behaviour checker, like with like (each model's rate among
    its answers that show the behaviour and among those that do not) and, for the instruction suite, its prompts that
    conflict with the behaviour apart from the others (`conflict`), with each model's paired difference from the base
    on the others (`other_minus_base`)."""
    out = {}
    for name, s in student.items():
        row = {"base": base["ood"][name]["rate"], "student": s["rate"], "n": s["n"]}
        teacher = base.get("ood_in_context", {}).get(name)
        if teacher is not None:
            row["in_context"] = teacher["rate"]
        row["minus_base"] = {
            who: paired_interval(base["ood"][name]["passed"], m["passed"])
            for who, m in (("in_context", teacher), ("student", s))
            if m is not None
        }
        if name == "instructions" and conflict is not None:
            measured = {"base": base["ood"][name], **({"in_context": teacher} if teacher else {}), "student": s}
            flags = [conflict(item) for item in instruction_items(s["n"])]
            row["conflict_split"] = {
                part: {who: passes(m["passed"], flags, want) for who, m in measured.items()}
                for part, want in (("conflicting", True), ("other", False))
            }
            if not all(flags):  # each model's paired difference from the base on the prompts that measure damage
                row["other_minus_base"] = {
                    who: paired_interval(unflagged(measured["base"]["passed"], flags), unflagged(m["passed"], flags))
                    for who, m in measured.items()
                    if who != "base"
                }
        if teacher is not None and behaviour is not None:
            shows = {
                who: [behaviour(r) for r in m["responses"]] for who, m in (("in_context", teacher), ("student", s))
            }
            row["like_with_like"] = {
                who: split_by_behaviour(m["passed"], shows[who]) for who, m in (("in_context", teacher), ("student", s))
            }
            row["like_minus_teacher"] = like_interval(
                teacher["passed"], shows["in_context"], s["passed"], shows["student"]
            )
        out[name] = row
    return out


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
    ood_key = {"model": cfg.model.student, "dtype": cfg.model.dtype}  # each suite adds its own (`_cached_ood`)
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
        "ood": ood_results(base, ood_student, yard.behaviour, yard.conflict),
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
