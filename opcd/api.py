"""`opcd.distill`: the `distill-prompt` pipeline for objects in hand (a model, a list of prompts, a `Dataset`).

    import opcd
    result = opcd.distill("qwen2.5-coder-0.5b-instruct", "Always answer like a pirate.", prompts,
                          scorer=lambda answer: "arr" in answer.lower(), train={"steps": 10})
    result.model_dir      # the selected checkpoint: a Hugging Face directory with its model card
    result.results["gap"]  # the context gap before and after, both directions

Objects are written where the pipeline reads files from: a model object (with its tokenizer) is saved into
`RUN/inputs/model`, prompts into `RUN/inputs/prompts.jsonl` (or the `Dataset` as a saved folder), the held-out split
likewise. Then it is the CLI's pipeline, unchanged: the same checks, cache, resume and report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opcd.config import load_config
from opcd.core.checkpoint import step_dir
from opcd.errors import OpcdError
from opcd.io import write_text
from opcd.recipes.pipeline import OOD_DEFAULT
from opcd.recipes.system_prompt import PRESET, EvalPlan, distill_prompt

HELD_OUT = 0.1  # without test_prompts: this share of the prompts (at least 4) is held out for the test split


@dataclass(frozen=True)
class Result:
    run_dir: Path
    model_dir: Path  # the selected checkpoint: a LoRA adapter at the preset (`AutoPeftModelForCausalLM` loads it,
    # `opcd export --merge-lora` merges it), a whole model with `model={"lora_rank": 0}`; README.md is its card
    results: dict  # what results.json holds: rates, gap, out-of-distribution suites, checkpoint, timings

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"


def _is_dataset(obj) -> bool:
    return hasattr(obj, "save_to_disk") and hasattr(obj, "column_names")


def _rows(prompts) -> list[dict]:
    """A list of strings or of message lists, as JSONL rows."""
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            rows.append({"prompt": p})
        elif isinstance(p, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in p):
            rows.append({"messages": p})
        else:
            raise OpcdError(
                f"prompts[{i}]: expected a string or a list of {{'role', 'content'}} messages, got {type(p).__name__}"
            )
    return rows


def _write_prompts(prompts, where: Path) -> str:
    """Where the pipeline reads these prompts from: a path as it is, a Dataset saved, a list as JSONL."""
    if isinstance(prompts, (str, Path)):
        return str(prompts)
    if _is_dataset(prompts):
        prompts.save_to_disk(str(where))
        return str(where)
    if not isinstance(prompts, Sequence) or not prompts:
        raise OpcdError("prompts: give a non-empty list of strings or message lists, a Dataset, or a file path")
    path = where.with_suffix(".jsonl")
    write_text(path, "".join(json.dumps(r) + "\n" for r in _rows(prompts)))
    return str(path)


def _split_off(prompts, n_test: int):
    """(training, held-out) parts of a list or a Dataset: the last `n_test` are held out."""
    if _is_dataset(prompts):
        n = len(prompts)
        return prompts.select(range(n - n_test)), prompts.select(range(n - n_test, n))
    return list(prompts)[:-n_test], list(prompts)[-n_test:]


def _model_name(model, tokenizer, where: Path) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    if not hasattr(model, "save_pretrained"):
        raise OpcdError(f"model: give a name, a directory or a transformers model, not {type(model).__name__}")
    if tokenizer is None:
        raise OpcdError("model: a model object needs its tokenizer: pass tokenizer=...")
    if not (where / "config.json").is_file():  # a rerun (resume) keeps the first copy
        model.save_pretrained(str(where))
        tokenizer.save_pretrained(str(where))
    return str(where)


def distill(
    model_or_name,
    context: str,
    prompts,
    /,
    *,
    tokenizer=None,
    teacher: str | None = None,
    method: str | None = None,
    scorer: Callable[[str], bool] | Sequence[str] | None = None,
    test_prompts=None,
    validation_prompts=None,
    select: str = "best",
    run_dir: str = "runs/distill",
    config: str | None = None,
    ood: bool = True,
    progress: bool = True,
    **sections: dict,
) -> Result:
    """Distill `context` into `model` on `prompts`, then measure what changed; see the module's docstring.

    - `model_or_name`: a packaged name, a directory, a hub id, or a transformers model (with `tokenizer`).
    - `prompts`: a list of strings or of message lists, a `datasets.Dataset`, or a file path.
    - `teacher`: `frozen` (the default: the model itself with the context), `live`, `ema` or a larger model's name;
      `method`: `opcd` (default), `offpolicy` or `sft`.
    - `scorer`: a `str -> bool` callable, or checker/grader specs (`["language:fr"]`); None measures the context gap
      only (it is always measured).
    - `test_prompts`: held-out prompts (default: the last 10 %, at least 4, of `prompts`).
    - `validation_prompts`: choose the checkpoint on these (default: the last one); `select`: `best` on them (ties:
      the later) or `earliest` within one standard error of the best.
    - `**sections`: config values by section, e.g. `train={"steps": 10, "lr": 3e-4}, rollout={"max_new_tokens": 64}`
      (over the CPU preset, or over `config`)."""
    run = Path(run_dir)
    inputs = run / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    name = _model_name(model_or_name, tokenizer, inputs / "model")
    if test_prompts is None:
        if isinstance(prompts, (str, Path)):
            raise OpcdError("test_prompts: give held-out prompts when prompts is a file")
        n_test = max(4, int(len(prompts) * HELD_OUT))
        if len(prompts) < n_test + 1:
            raise OpcdError(f"prompts: {len(prompts)} are too few to hold out {n_test} for testing; give test_prompts")
        prompts, test_prompts = _split_off(prompts, n_test)
    overrides = [] if config else list(PRESET)
    overrides += [f"model.student={name}"]
    overrides += [f"model.teacher={teacher}"] if teacher else []
    overrides += [f"loss.mode={method}"] if method else []
    overrides += [f"data.context={context}", f"data.prompts={_write_prompts(prompts, inputs / 'prompts')}"]
    overrides += [f"train.run_dir={run}"]
    for section, values in sections.items():
        if not isinstance(values, dict):
            raise OpcdError(f"{section}=...: give the section's values as a dict, e.g. train={{'steps': 10}}")
        overrides += [f"{section}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    cfg = load_config(config, overrides)
    custom = scorer if callable(scorer) else None
    code = hashlib.sha256(getattr(getattr(custom, "__code__", None), "co_code", b"")).hexdigest()[:12]
    specs = (f"python:{getattr(custom, '__qualname__', 'scorer')}:{code}",) if custom else tuple(scorer or ())
    plan = EvalPlan(
        scorer=specs,
        custom_scorer=custom,
        test_prompts=_write_prompts(test_prompts, inputs / "test"),
        test_max=0,
        validation_prompts="" if validation_prompts is None else _write_prompts(validation_prompts, inputs / "val"),
        select=select,
        ood=dict(OOD_DEFAULT) if ood else {},
        base_cache=str(run / "eval") if custom else "",  # a Python scorer has no stable name to share scores by
    )
    results = distill_prompt(cfg, plan, progress=progress)
    return Result(run, step_dir(run, results["checkpoint"]["step"]) / "model", results)
