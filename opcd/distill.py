"""`opcd distill-prompt`: distill a system prompt into a model, then show what it changed.

One run: evaluate the base model without and with the prompt on held-out prompts, train (OPCD, off-policy
distillation or SFT on teacher samples, as `cfg.loss.mode` says), pick the checkpoint (the last one, or the best on a
validation split: never on the test prompts), evaluate that student without the prompt on the same held-out prompts,
and the base and the student on the out-of-distribution suites. Writes `report.md`, `results.json` and
`training.png` into the run directory. Every evaluation is saved as it finishes (`eval/*.json`), so rerunning the
same command after an interruption resumes training and skips what was already measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opcd import models
from opcd.checkpoint import list_checkpoints
from opcd.config import Config, DataConfig, RolloutConfig, validate
from opcd.data import check_disjoint, file_digest, load_examples, shared_context
from opcd.errors import OpcdError
from opcd.evaluate import EvalResult, out_of_distribution, score
from opcd.metrics import read_metrics
from opcd.prompts import PromptRenderer
from opcd.tasks import build_scorer, is_grader
from opcd.tasks.ood import ood_digest
from opcd.train import check_resumable, train
from opcd.versions import software

# The CPU-sized training preset `opcd distill-prompt` starts from (without --config): measured on Qwen2.5-Coder-0.5B,
# 2 cores, ~12 s per step; the README's "Choosing the estimator and learning rate" says why these values.
PRESET = [
    "loss.estimator=full",
    "rollout.max_new_tokens=32",
    "train.steps=20",
    "train.prompts_per_step=8",
    "train.micro_batch_size=8",
    "train.lr=1e-5",
    "train.warmup_steps=2",
    "train.save_every=10",
    "train.keep_checkpoints=0",
]
METHOD_NAMES = {"opcd": "OPCD", "offpolicy": "Off-policy distillation", "sft": "SFT on teacher samples"}
GREEDY_SHORT = RolloutConfig(temperature=0.0, max_new_tokens=48)
OOD_DEFAULT = {
    "instructions": (0, RolloutConfig(temperature=0.0, max_new_tokens=128, batch_size=30)),
    "gsm8k": (20, RolloutConfig(temperature=0.0, max_new_tokens=256, batch_size=20)),
}


@dataclass(frozen=True)
class EvalPlan:
    """What to measure around a distillation run."""

    scorer: tuple[str, ...]  # checker specs (`language:fr`, ...) or one grader (`number`, `choice`, ...)
    test_prompts: str = "opcd:generic_eval"
    test_max: int = 24  # first N test prompts (0 = all)
    validation_prompts: str = ""  # select the checkpoint on these (never on the test prompts); "" = last checkpoint
    validation_max: int = 0
    rollout: RolloutConfig = GREEDY_SHORT
    ood: dict = field(default_factory=lambda: dict(OOD_DEFAULT))  # {} = no out-of-distribution suites
    keep_weights: bool = True  # False: delete the checkpoints after evaluation (sweeps on a small disk)
    base_cache: str = ""  # where base-model scores are kept for reuse ("" = RUN/eval); sweeps share one


def write_atomic(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader never sees half a file


def _cached(folder: Path, name: str, key: dict, compute):
    """`compute()` once per `key` and software versions, stored as `folder/name-DIGEST.json` so reruns (and other
    runs) reuse it; after an upgrade it is measured again, not mixed with scores the new versions made."""
    key = {**key, "software": software()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = folder / f"{name}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_atomic(path, json.dumps(value, indent=1))
    return value


def _summaries(results: dict[str, EvalResult]) -> dict:
    return {name: r.summary() for name, r in results.items()}


def evaluate_model(
    model_path: str, cfg: Config, plan: EvalPlan, renderer, examples, scorer, *, with_context: bool, label: str
) -> dict:
    """Held-out rate of one model, with or without the context."""
    model = models.load_model(model_path, cfg.model.dtype, cfg.model.device)
    result = score(
        model,
        renderer.tokenizer,
        renderer,
        examples,
        scorer,
        with_context=with_context,
        rollout=plan.rollout,
        dtype=cfg.model.dtype,
        desc=f"eval {label}",
    )
    return {"test": result.summary()}


def evaluate_ood(model_path: str, cfg: Config, plan: EvalPlan, renderer) -> dict:
    model = models.load_model(model_path, cfg.model.dtype, cfg.model.device)
    return _summaries(out_of_distribution(model, renderer.tokenizer, renderer, plan.ood, dtype=cfg.model.dtype))


def _validation_data(cfg: Config, plan: EvalPlan) -> DataConfig:
    return DataConfig(**{**asdict(cfg.data), "prompts": plan.validation_prompts, "max_prompts": plan.validation_max})


def best_checkpoint(found: list[tuple[int, Path]], score) -> tuple[int, Path, dict[int, float]]:
    """The checkpoint with the best `score(step, path)` (ties: the later one), and every checkpoint's score."""
    rates = {step: score(step, path) for step, path in found}
    best = max(rates, key=lambda s: (rates[s], s))
    return best, dict(found)[best], rates


def _select(run: Path, cfg: Config, plan: EvalPlan, renderer, scorer, held_out) -> tuple[int, Path, dict]:
    """The checkpoint to report: the last, or the best on the validation prompts (ties: the later one)."""
    found = list_checkpoints(run)
    if not found:
        raise OpcdError(f"{run} has no checkpoint to evaluate")
    if not plan.validation_prompts:
        step, path = found[-1]
        return step, path, {"rule": "last checkpoint (no validation split given)"}
    validation = load_examples(_validation_data(cfg, plan))

    def score(step: int, path: Path) -> float:
        key = {
            "model": str(path),
            "mtime": (path / "model").stat().st_mtime,
            "dtype": cfg.model.dtype,
            "validation": asdict(_validation_data(cfg, plan)),
            "file": file_digest(plan.validation_prompts),
            "scorer": plan.scorer,
            "rollout": asdict(plan.rollout),
        }
        return _cached(
            run / "eval",
            f"validation-{step}",
            key,
            lambda: evaluate_model(
                str(path / "model"),
                cfg,
                plan,
                renderer,
                validation,
                scorer,
                with_context=False,
                label=f"validation step {step}",
            )["test"]["rate"],
        )

    best, path, rates = best_checkpoint(found, score)
    return (
        best,
        path,
        {
            "rule": f"best on validation '{plan.validation_prompts}' ({len(validation)} prompts)",
            "validation_rates": rates,
        },
    )


def _plot(rows: list[dict], rates: list[tuple[str, float]], path: Path, metric: str, validation: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    key = "kl/reverse_full" if rows and "kl/reverse_full" in rows[0] else "loss/value"
    left.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o")
    left.set_xlabel("step")
    left.set_ylabel("reverse KL to the teacher (nats/token)" if key.startswith("kl") else "loss")
    left.set_title("training")
    left.grid(alpha=0.3)
    if validation:  # the selection's scores, checkpoint by checkpoint
        twin = left.twinx()
        steps = sorted(validation)
        twin.plot(steps, [100 * validation[s] for s in steps], marker="s", color="#e07b39")
        twin.set_ylabel(f"validation {metric} (%)", color="#e07b39")
        twin.set_ylim(0, 105)
    names, values = zip(*rates, strict=True)
    right.barh(names, [100 * v for v in values], color=["#999", "#4a90d9", "#e07b39"][: len(values)])
    right.set_xlabel(f"{metric} on held-out prompts (%)")
    right.set_xlim(0, 100)
    right.invert_yaxis()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def distill_prompt(cfg: Config, plan: EvalPlan, *, progress: bool = True) -> dict:
    """Evaluate, train, select, evaluate; returns (and writes) the results. Rerunning resumes."""
    began = time.time()
    # every input is checked before the first (minutes-long) evaluation
    validate(cfg)
    run = Path(cfg.train.run_dir)
    check_resumable(run, cfg)
    scorer = build_scorer(list(plan.scorer))
    train_examples = load_examples(cfg.data)
    test_data = DataConfig(**{**asdict(cfg.data), "prompts": plan.test_prompts, "max_prompts": plan.test_max})
    held_out = load_examples(test_data)
    check_disjoint(train_examples, held_out, cfg.data.prompts, plan.test_prompts)
    if plan.validation_prompts:
        validation = load_examples(_validation_data(cfg, plan))
        check_disjoint(train_examples, validation, cfg.data.prompts, plan.validation_prompts, "validation")
        check_disjoint(validation, held_out, plan.validation_prompts, plan.test_prompts, "test", "validation")
    if is_grader(plan.scorer):
        missing = [e.source for e in held_out if e.answer is None]
        if missing:
            raise OpcdError(f"{missing[0]}: grader '{plan.scorer[0]}' needs an 'answer' field on every test example")
    tokenizer = models.load_tokenizer(cfg.model.student)
    renderer = PromptRenderer(tokenizer, cfg.data)
    metric = "accuracy" if is_grader(plan.scorer) else "adherence"
    cache = Path(plan.base_cache) if plan.base_cache else run / "eval"
    base_key = {
        "model": cfg.model.student,
        "dtype": cfg.model.dtype,
        "data": asdict(test_data),
        "context": shared_context(cfg.data),
        "test_file": file_digest(plan.test_prompts),
        "scorer": plan.scorer,
        "rollout": asdict(plan.rollout),
    }
    used = plan.ood.get("instructions", (0, None))[0]
    ood_key = {"model": cfg.model.student, "ood": str(plan.ood), "dtype": cfg.model.dtype, "items": ood_digest(used)}
    base = {  # the untrained model on the test prompts, without and with the context
        side: _cached(
            cache,
            f"base-{side}",
            base_key,
            lambda with_context=with_context, side=side: evaluate_model(
                cfg.model.student,
                cfg,
                plan,
                renderer,
                held_out,
                scorer,
                with_context=with_context,
                label=f"base {side} the prompt",
            ),
        )
        for side, with_context in (("without", False), ("with", True))
    }
    if plan.ood:
        base["without"] |= _cached(
            cache, "base-ood", ood_key, lambda: evaluate_ood(cfg.model.student, cfg, plan, renderer)
        )
    if base["with"]["test"]["rate"] <= base["without"]["test"]["rate"] and progress:
        print(
            f"opcd: warning: the base model scores {base['without']['test']['rate']:.0%} without the prompt and "
            f"{base['with']['test']['rate']:.0%} with it: the prompt does not help this model on these prompts"
        )

    run = train(cfg, resume=True, progress=progress)
    step, path, selection = _select(run, cfg, plan, renderer, scorer, held_out)
    student_key = {**base_key, "checkpoint": str(path), "mtime": (path / "model").stat().st_mtime}
    student = _cached(
        run / "eval",
        "student",
        student_key,
        lambda: evaluate_model(
            str(path / "model"), cfg, plan, renderer, held_out, scorer, with_context=False, label=f"student step {step}"
        ),
    )
    if plan.ood:
        student |= _cached(
            run / "eval",
            "student-ood",
            {**ood_key, **student_key},
            lambda: evaluate_ood(str(path / "model"), cfg, plan, renderer),
        )
    rows = read_metrics(run / "metrics.jsonl")
    method = METHOD_NAMES[cfg.loss.mode]
    rates = [
        ("Base, without the prompt", base["without"]["test"]["rate"]),
        ("In-context: base with the prompt", base["with"]["test"]["rate"]),
        (f"{method} student, without the prompt", student["test"]["rate"]),
    ]
    results = {
        "model": cfg.model.student,
        "method": cfg.loss.mode,
        "run_dir": str(run),
        "context": shared_context(cfg.data),
        "scorer": list(plan.scorer),
        "metric": metric,
        "test": {"prompts": plan.test_prompts, "n": len(held_out)},
        "checkpoint": {"step": step, **selection},
        "rates": dict(rates),
        "truncated": dict(
            zip(
                [name for name, _ in rates],
                [r["test"].get("truncated", 0.0) for r in (base["without"], base["with"], student)],
                strict=True,
            )
        ),
        "ood": {
            name: {"base": base["without"][name]["rate"], "student": student[name]["rate"], "n": student[name]["n"]}
            for name in plan.ood
            if name in student
        },
        "kl_first": rows[0].get("kl/reverse_full") if rows else None,
        "kl_last": rows[-1].get("kl/reverse_full") if rows else None,
        "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": sum(r["time/step"] for r in rows),
        "seconds": time.time() - began,
        "software": software(),
    }
    _plot(rows, rates, run / "training.png", metric, selection.get("validation_rates", {}))
    write_atomic(run / "results.json", json.dumps(results, indent=1))
    if not plan.keep_weights:  # only now: until results.json exists, a rerun resumes from these
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
    write_atomic(
        run / "report.md", report(results, held_out, base["without"]["test"]["responses"], student["test"]["responses"])
    )
    return results


def report(results: dict, held_out, before: list[str], after: list[str]) -> str:
    metric = results["metric"]
    lines = [
        f"# opcd distill-prompt: {results['method']}",
        "",
        f"Context distilled into `{results['model']}`: {results['context']!r}",
        f"Scored with `{' '.join(results['scorer'])}` on {results['test']['n']} held-out prompts "
        f"(`{results['test']['prompts']}`). Checkpoint: step {results['checkpoint']['step']}, "
        f"{results['checkpoint']['rule']}.",
        "",
        f"| model | {metric} | cut at the token budget |",
        "|---|---|---|",
        *[f"| {name} | {rate:.1%} | {results['truncated'][name]:.0%} |" for name, rate in results["rates"].items()],
        "",
    ]
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
    lines += [
        f"Training {results['train_seconds']:.0f} s; whole run {results['seconds']:.0f} s.",
        "",
        "## Held-out answers without the prompt: base → student",
        "",
    ]
    for ex, b, a in list(zip(held_out, before, after, strict=False))[:6]:
        lines += [f"- **{ex.messages[-1]['content']}**", f"  - base: {b!r}", f"  - student: {a!r}"]
    return "\n".join(lines) + "\n"
