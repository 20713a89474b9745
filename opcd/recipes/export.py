"""A model you can ship: the model card, and `opcd export` (a plain HF directory, LoRA merged, optionally pushed).

After `distill-prompt` selects a checkpoint, its `model/` directory gets a `README.md` model card: the base model, the
context (its SHA-256, and its text unless it is private), the method and settings, the before/after table, and the
library versions. `export` copies that checkpoint (merging a LoRA adapter into its base with `--merge-lora`) into a new
directory that plain `transformers` loads, writes the card there, and can push it to the Hugging Face Hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import tomllib
from pathlib import Path

from opcd.config import Config, build_config
from opcd.core import models
from opcd.core.checkpoint import list_checkpoints
from opcd.errors import OpcdError
from opcd.io import write_text
from opcd.versions import software

CARD = "README.md"
# where the packaged models come from (their weights are these models' GGUF files, dequantized)
ORIGIN = {
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen2.5-coder-0.5b-instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "qwen2.5-coder-1.5b-instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
}


def _settings(cfg: Config) -> list[tuple[str, str]]:
    m, r, loss, t = cfg.model, cfg.rollout, cfg.loss, cfg.train
    tuned = f"LoRA rank {m.lora_rank} (alpha {m.lora_alpha}, {m.lora_targets})" if m.lora_rank else "full fine-tuning"
    return [
        ("method", {"opcd": "on-policy context distillation", "offpolicy": "off-policy context distillation",
                    "sft": "SFT on the teacher's samples"}[loss.mode]),
        ("loss", f"per-token reverse KL, {loss.estimator} estimator" if loss.mode == "opcd" else loss.mode),
        ("teacher", m.teacher),
        ("weights", tuned),
        ("steps × prompts", f"{t.steps} × {t.prompts_per_step}"),
        ("learning rate", f"{t.lr:g} (AdamW, warmup {t.warmup_steps})"),
        ("sampling", f"T {r.temperature:g}, top-p {r.top_p:g}, top-k {r.top_k}, {r.max_new_tokens} new tokens"),
        ("seed", str(t.seed)),
    ]  # fmt: skip


def _results_table(results: dict) -> list[str]:
    lines = []
    if results.get("rates"):
        lines += [f"| model | {results['metric']} |", "|---|---|"]
        lines += [f"| {name} | {rate:.1%} |" for name, rate in results["rates"].items()]
        lines.append("")
    gap = results.get("gap")
    if gap:
        share = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
        lines += [
            "Context gap to the teacher with the prompt (nats/token, 0 = the teacher):",
            "",
            "| model | reverse KL on its own answers | extra NLL on the teacher's answers |",
            "|---|---|---|",
            f"| base | {gap['base']['reverse_kl']:.4f} | {gap['base']['extra_nll']:.4f} |",
            f"| this model | {gap['student']['reverse_kl']:.4f} | {gap['student']['extra_nll']:.4f} |",
            f"| gap closed | {share(gap['closed']['reverse_kl'])} | {share(gap['closed']['extra_nll'])} |",
            "",
        ]
    if results.get("ood"):
        lines += ["Out of distribution, without any context:", "", "| suite | base | this model |", "|---|---|---|"]
        lines += [f"| {n} ({r['n']}) | {r['base']:.1%} | {r['student']:.1%} |" for n, r in results["ood"].items()]
        lines.append("")
    return lines


def model_card(cfg: Config, context: str, results: dict | None, versions: dict, private: bool = False) -> str:
    """The card of a distilled model (`results`: the pipeline's, or None for a bare `opcd train` run)."""
    base = ORIGIN.get(cfg.model.student, cfg.model.student)
    digest = hashlib.sha256(context.encode()).hexdigest()
    hub_id = re.fullmatch(r"[\w.\-]+/[\w.\-]+", base) and not Path(base).exists()
    front = ["---", *([f"base_model: {base}"] if hub_id else []), "library_name: transformers"]
    front += ["tags:", "- opcd", "- context-distillation"]
    lines = [*front, "---", "", f"# {base}, with a context distilled into its weights", ""]
    lines += [
        f"This model is `{base}` trained with opcd (`pip install opcd-lm`) so that, **without** the context "
        "below in its prompt, it behaves as the base model does with it. Call it with the plain chat template and no "
        "system prompt.",
        "",
    ]
    if cfg.model.student in ORIGIN:
        lines += [f"The base weights are opcd's packaged copy of `{base}` (its GGUF file, dequantized).", ""]
    lines += ["## The context", "", f"SHA-256 of its text: `{digest}` ({len(context)} characters).", ""]
    lines += ["The text is private." if private else "```text\n" + context + "\n```", ""]
    lines += ["## Training", "", "| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in _settings(cfg)], ""]
    if results is not None:
        where = f"{results['test']['n']} held-out prompts (`{results['test']['prompts']}`)"
        chosen = f"checkpoint: step {results['checkpoint']['step']}, {results['checkpoint']['rule']}"
        lines += ["## Before and after", "", f"Measured by `opcd distill-prompt` on {where}; {chosen}.", ""]
        lines += _results_table(results)
    lines += ["## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    return "\n".join(lines)


def run_config(run_dir: Path) -> Config:
    path = run_dir / "config.toml"
    if not path.is_file():
        raise OpcdError(f"{run_dir}: no config.toml: give the directory of an opcd run (train.run_dir)")
    return build_config(tomllib.loads(path.read_text()), str(path))


def selected_checkpoint(run_dir: Path) -> tuple[Path, dict | None]:
    """The checkpoint `distill-prompt` reported (results.json), else the newest one; and the results, if any."""
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    found = dict(list_checkpoints(run_dir))
    if not found:
        raise OpcdError(f"{run_dir} has no checkpoint: train first (or the run deleted its weights: keep_weights)")
    step = results["checkpoint"]["step"] if results else max(found)
    if step not in found:
        raise OpcdError(f"{run_dir}: results.json names step {step}, whose checkpoint is gone: rerun distill-prompt")
    return found[step] / "model", results


def write_card(run_dir: Path, model_dir: Path, results: dict | None, private: bool) -> Path:
    cfg = run_config(run_dir)
    context = results["context"] if results else cfg.data.context
    if not context and cfg.data.context_file and Path(cfg.data.context_file).is_file():
        context = Path(cfg.data.context_file).read_text()
    versions = (results or {}).get("software") or software()
    write_text(model_dir / CARD, model_card(cfg, context, results, versions, private))
    return model_dir / CARD


def export(run_dir: str, out: str = "", merge_lora: bool = False, push_to_hub: str = "", private: bool = False) -> Path:
    """Copy the run's selected checkpoint into `out` (default RUN/export) as a plain HF directory with its card;
    `merge_lora`: a LoRA adapter is merged into its base; `push_to_hub`: upload it to that repository; `private`:
    the card gives the context's digest only (also when the run was distilled with --private-context)."""
    run = Path(run_dir)
    model_dir, results = selected_checkpoint(run)
    private = private or bool((results or {}).get("private_context"))
    target = Path(out) if out else run / "export"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OpcdError(f"{target} exists and is not empty: choose another --out or remove it")
    lora = (model_dir / "adapter_config.json").is_file()
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        if lora and merge_lora:
            cfg = run_config(run)
            merged = models.load_model(str(model_dir), cfg.model.dtype)
            merged.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
        else:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        write_card(run, tmp, results, private)
        if target.exists():
            target.rmdir()
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if lora and not merge_lora:
        print(f"opcd: {target} holds a LoRA adapter; --merge-lora writes a model that loads without PEFT")
    if push_to_hub:
        push(target, push_to_hub)
    return target


def push(folder: Path, repo: str) -> str:
    """Upload `folder` to the Hub repository `repo` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="opcd export")
    except Exception as e:  # the hub's errors are many (auth, network, name); each gets the same one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise OpcdError(f"--push-to-hub {repo}: {type(e).__name__}: {first} (log in with `hf auth login`)") from None
    return str(getattr(info, "commit_url", repo))
