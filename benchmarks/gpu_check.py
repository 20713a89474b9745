"""A few OPCD steps on one GPU: tokens/s, step-time breakdown and peak GPU memory, HF and vLLM rollouts.

The device machine has no network and takes at most 64 MiB of files per call, so the 0.5B and 1.5B weights cannot
travel. The check therefore runs the *architectures* of Qwen2.5-Coder-0.5B-Instruct (student) and -1.5B (cross-size
teacher) with random weights and the real tokenizer and chat template: the same shapes, kernels and memory, hence
the same speed per token; only the text is meaningless (response lengths are whatever the random model samples, so
tokens/s is reported per generated token).

    python benchmarks/gpu_check.py prepare .gpu_assets      # here (CPU): configs + tokenizer, ~25 MB
    bash benchmarks/gpu_check.sh                            # there: carry .gpu_assets (and .whl for vLLM)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONTEXT = "Always answer in French, whatever language the question is in."
PROMPTS_PER_STEP, NEW_TOKENS, STEPS = 16, 128, 5
SIZES_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12}


def prepare(out: Path) -> None:
    """Copy the 0.5B model's config and tokenizer (no weights) and derive the 1.5B config."""
    from opcd.core import models

    source = Path(models.resolve("qwen2.5-coder-0.5b-instruct"))
    for name, change in (("qwen-0.5b", {}), ("qwen-1.5b", SIZES_1_5B)):
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        for f in source.iterdir():
            if f.suffix in (".json", ".jinja", ".txt") and f.name != "model.safetensors.index.json":
                shutil.copy(f, target / f.name)
        config = json.loads((target / "config.json").read_text())
        config.update(change)
        config["layer_types"] = ["full_attention"] * config["num_hidden_layers"]
        if change:
            config["tie_word_embeddings"] = True  # as the real 1.5B
        (target / "config.json").write_text(json.dumps(config, indent=1))
    print(f"prepared {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.0f} MiB")


SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def materialize(assets: Path, work: Path, smoke: bool = False) -> dict[str, Path]:
    """Random-weight models of the two architectures, saved as HF directories on local disk."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for name in ("qwen-0.5b", "qwen-1.5b"):
        target = work / name
        if not (target / "model.safetensors").exists():
            torch.manual_seed(0)
            config = AutoConfig.from_pretrained(assets / name)
            if smoke:  # the script's own check on a CPU: tiny shapes, same code path
                for k, v in SMOKE.items():
                    setattr(config, k, v)
                config.layer_types = ["full_attention"] * config.num_hidden_layers
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            model.save_pretrained(target)
            for f in (assets / name).iterdir():
                if f.name != "config.json":
                    shutil.copy(f, target / f.name)
        out[name] = target
    return out


def run(name: str, overrides: list[str], work: Path, smoke: bool = False) -> dict:
    import torch

    from opcd.config import load_config
    from opcd.core.train import train

    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(
        None,
        [
            "data.prompts=opcd:generic_train",
            f"data.context={CONTEXT}",
            "loss.min_kl=0",  # random weights: the context may change little
            f"rollout.max_new_tokens={NEW_TOKENS}",
            f"train.steps={STEPS}",
            f"train.prompts_per_step={PROMPTS_PER_STEP}",
            f"train.micro_batch_size={PROMPTS_PER_STEP}",
            "train.lr=1e-5",
            "train.save_every=0",
            "train.report_to=none",
            f"train.run_dir={run_dir}",
            *(
                ["rollout.max_new_tokens=8", "train.steps=2", "train.prompts_per_step=2", "model.dtype=fp32"]
                if smoke
                else []
            ),
            *overrides,
        ],
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.time()
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]  # step 1: warm-up
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time/")}
    tokens = statistics.median(r["rollout/response_tokens"] for r in rows) * cfg.train.prompts_per_step
    return {
        "run": name,
        "step_s": med["time/step"],
        "generate_s": med.get("time/generate", 0.0),
        "teacher_s": med.get("time/teacher", 0.0),
        "student_s": med.get("time/student", 0.0),
        "optimizer_s": med.get("time/optimizer", 0.0),
        "gen_tokens_per_s": tokens / max(med.get("time/generate", 1e-9), 1e-9),
        "train_tokens_per_s": tokens / med["time/step"],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "wall_s": time.time() - began,
    }


def run_trl(student: Path, smoke: bool = False) -> dict:
    """TRL's SDFTTrainer on the same student, prompts, context and lengths as the opcd rows (bf16 autocast over fp32
    weights, student top-256 reverse KL as `loss.estimator=topk`); its steps are timed as a whole."""
    import torch

    from benchmarks.bench_opcd import trl_step_times
    from opcd.core.data import read_jsonl, resolve_path

    batch, new_tokens, steps = (2, 8, 2) if smoke else (PROMPTS_PER_STEP, NEW_TOKENS, STEPS)
    prompts = [row["prompt"] for _, row in read_jsonl(resolve_path("opcd:generic_train"))][: batch * steps]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.time()
    times, lengths = trl_step_times(
        student, prompts, CONTEXT, steps=steps, batch=batch, new_tokens=new_tokens, bf16=cuda, cpu=not cuda
    )
    step = statistics.median(times[1:])
    tokens = statistics.median(lengths[1:] or lengths) * batch
    return {
        "step_s": step,
        "train_tokens_per_s": tokens / step,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "wall_s": time.time() - began,
    }


TABLE_HEAD = "| run | step s | generate s | teacher s | student s | optimizer s | gen tok/s | train tok/s | peak GiB |"


def row_line(r: dict) -> str:
    if "error" in r:
        return f"| {r['run']} | failed: {r['error'][:150]} |" + " |" * 7
    if "generate_s" not in r:  # TRL: one time for the whole step
        return f"| {r['run']} | {r['step_s']:.2f} | | | | | | {r['train_tokens_per_s']:.0f} | {r['peak_gib']:.1f} |"
    return (
        f"| {r['run']} | {r['step_s']:.2f} | {r['generate_s']:.2f} | {r['teacher_s']:.2f} | {r['student_s']:.2f} | "
        f"{r['optimizer_s']:.2f} | {r['gen_tokens_per_s']:.0f} | {r['train_tokens_per_s']:.0f} | {r['peak_gib']:.1f} |"
    )


def check(assets: Path, out: Path, smoke: bool = False) -> None:
    import importlib.util

    import torch

    if not torch.cuda.is_available() and not smoke:
        raise SystemExit("gpu_check: no CUDA device visible")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / ("opcd_gpu_smoke" if smoke else "opcd_gpu_check")
    paths = materialize(assets, work, smoke)
    student, teacher = f"model.student={paths['qwen-0.5b']}", f"model.teacher={paths['qwen-1.5b']}"
    plan = [
        ("0.5B self-distillation, HF generate", [student]),
        ("0.5B self-distillation, HF generate, top-256 loss (TRL's)", [student, "loss.estimator=topk"]),
        ("TRL SDFTTrainer, 0.5B self-distillation, top-256 loss", None),
        ("0.5B student + 1.5B teacher, HF generate", [student, teacher]),
    ]
    if importlib.util.find_spec("vllm"):
        plan.append(("0.5B self-distillation, vLLM rollouts", [student, "rollout.engine=vllm"]))
    else:
        print("gpu_check: vLLM is not installed here: the vLLM row is skipped (carry its wheels to include it)")
    if not importlib.util.find_spec("trl"):
        print("gpu_check: TRL is not installed here: its row is skipped (carry its wheels, see gpu_check.sh)")
        plan = [(name, o) for name, o in plan if o is not None]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (smoke run on the CPU)"
    head = [
        f"GPU: {device}, torch {torch.__version__}; {PROMPTS_PER_STEP} prompts x <={NEW_TOKENS} tokens per step, "
        f"median of steps 2-{STEPS}, bf16 autocast, full fine-tuning",
        "",
        TABLE_HEAD,
        "|---" * 9 + "|",
    ]
    results: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, overrides) in enumerate(plan):
        print(f"gpu_check: {name} ...", flush=True)
        try:
            r = run_trl(paths["qwen-0.5b"], smoke) if overrides is None else run(f"run{i}", overrides, work, smoke)
            results.append(r | {"run": name})
        except Exception as e:  # a failed row is reported, the others still run
            results.append({"run": name, "error": f"{type(e).__name__}: {e}"})
        print(row_line(results[-1]), flush=True)
        text = "\n".join(head + [row_line(r) for r in results])  # written after every row: a cut run keeps its rows
        (out / "gpu_check.md").write_text(text + "\n")
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("prepare").add_argument("out", type=Path)
    c = sub.add_parser("check")
    c.add_argument("--assets", type=Path, default=ROOT / ".gpu_assets")
    c.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "gpu_check")))
    c.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed: checks this script, not the GPU")
    args = p.parse_args()
    if args.what == "prepare":
        prepare(args.out)
    else:
        check(args.assets, args.out, args.smoke)


if __name__ == "__main__":
    main()
