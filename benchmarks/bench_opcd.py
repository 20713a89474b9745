"""Side-by-side benchmark: opcd's OPCD step against TRL's SDFTTrainer doing the same work, plus opcd's own parts.

    .venv/bin/python benchmarks/bench_opcd.py              # everything (about 30 min on 2 CPU cores)
    .venv/bin/python benchmarks/bench_opcd.py --quick      # smollm2 only, fewer steps

Every configuration runs in its own subprocess (so its peak memory is its own) and prints one JSON line; the parent
collects them, prints Markdown tables, and writes `benchmarks/results/bench.{md,json,png}`.

opcd's processes run under mimalloc, as the `opcd` command does (`opcd/core/heap.py`); TRL's under glibc's default
allocator, as `python` or `accelerate launch` start it. Same work on both sides: the same model as student and
frozen teacher, the same 8 prompts per step, one sample each, the same maximum response length, temperature 1.0,
student top-256 reverse KL, lr 1e-5, bf16 autocast over fp32 weights, the context before the prompt in the
teacher's input, and no truncation of the teacher's prompt (TRL's default `max_prompt_length=512` would silently drop
most of a 2,048-token context). Times are the median over the steps after the first (the first allocates optimizer
state). The roofline table sets each part of opcd's step against this machine's bf16 matmul rate at the model's
shapes and its memory bandwidth, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROMPTS = [
    "What is the capital of France?",
    "How do plants make food?",
    "Give me a tip for sleeping well.",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "What is a prime number?",
    "Name a famous painter.",
    "How far away is the Moon?",
    "What does a compiler do?",
    "How do bees make honey?",
    "What is the tallest mountain?",
    "Why do cats purr?",
    "How does a rainbow form?",
    "What is inflation?",
    "How do vaccines work?",
    "What causes the seasons?",
]
LESSON = (
    "- EXPERIENCE ITEM: When a question asks for a fact, state the fact first and then one sentence of context. "
    "Prefer plain words over jargon, check units and numbers twice, and never invent sources. "
)
SHORT_CONTEXT = "Always answer in French."
BATCH, NEW_TOKENS = 8, 32


def context_of(tokens: int, tokenizer) -> str:
    """A context of about `tokens` tokens (0: the short French instruction, ~6 tokens)."""
    if tokens == 0:
        return SHORT_CONTEXT
    text = SHORT_CONTEXT + "\n"
    while len(tokenizer(text, add_special_tokens=False).input_ids) < tokens:
        text += LESSON
    ids = tokenizer(text, add_special_tokens=False).input_ids[:tokens]
    return tokenizer.decode(ids)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- one configuration, in a subprocess --------------------------------------------------------------------------


def run_opcd(model: str, ctx_tokens: int, steps: int, extra: list[str]) -> dict:
    from opcd.core import models

    tokenizer = models.load_tokenizer(model)
    with tempfile.TemporaryDirectory() as tmp:  # checkpoints of a 0.5B model with optimizer state are 7.5 GB
        return _run_opcd(model, ctx_tokens, steps, extra, tokenizer, Path(tmp))


def _run_opcd(model: str, ctx_tokens: int, steps: int, extra: list[str], tokenizer, work: Path) -> dict:
    from opcd.config import load_config
    from opcd.core.metrics import read_metrics
    from opcd.core.train import train

    prompts = work / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (work / "ctx.txt").write_text(context_of(ctx_tokens, tokenizer))
    cfg = load_config(
        None,
        [
            f"model.student={model}",
            f"data.prompts={prompts}",
            f"data.context_file={work / 'ctx.txt'}",
            f"rollout.max_new_tokens={NEW_TOKENS}",
            f"train.steps={steps}",
            f"train.prompts_per_step={BATCH}",
            f"train.micro_batch_size={BATCH}",
            "train.lr=1e-5",
            "train.save_every=0",
            "train.report_to=none",
            f"train.run_dir={work / 'run'}",
            *extra,
        ],
    )
    # the final checkpoint is not part of a step; time it out of the measurement by reading the logged step times
    train(cfg, progress=False)
    rows = read_metrics(work / "run" / "metrics.jsonl")[1:]
    parts = ["generate", "teacher", "student", "optimizer", "other"]
    return {
        "step_s": statistics.median(r["time/step"] for r in rows),
        **{f"{p}_s": statistics.median(r[f"time/{p}"] for r in rows) for p in parts},
        "tokens": statistics.mean(r["rollout/response_tokens"] for r in rows),
        "peak_mib": peak_mib(),
        **step_work(model, cfg, tokenizer, statistics.mean(r["rollout/response_tokens"] for r in rows)),
    }


def model_sizes(model) -> dict:
    """Weights of the decoder's linear layers (`body`), of the vocabulary head, and all trainable ones."""
    import torch

    head = model.get_output_embeddings().weight
    body = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return {"body": body, "head": head.numel(), "params": sum(p.numel() for p in model.parameters())}


def step_work(model: str, cfg, tokenizer, response_tokens: float) -> dict:
    """What one step computes, from its real (unpadded) tokens: matmul FLOPs of the student's forward and backward
    (3x forward) and of the teacher's forward over the tokens it does not take from its prefix cache, the bytes of
    bf16 weights generation reads once per decoded token, and the bytes AdamW reads and writes (fp32 weight, grad
    and two moments read, three written)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from opcd.core import models
    from opcd.core.prompts import PromptRenderer

    with torch.device("meta"):
        sizes = model_sizes(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(models.resolve(model))))
    renderer = PromptRenderer(tokenizer, cfg.data)
    context = Path(cfg.data.context_file).read_text()
    pairs = [renderer.render([{"role": "user", "content": p}], context) for p in PROMPTS]
    student = statistics.mean(len(p.student_ids) for p in pairs)
    teacher = statistics.mean(
        len(p.teacher_ids) - (p.teacher_prefix if p.teacher_prefix >= 32 else 0) for p in pairs
    )  # the cache's min_tokens: shorter shared prefixes are scored with the rest
    resp = BATCH * response_tokens
    return {
        "student_flop": 6 * (sizes["body"] * BATCH * (student + response_tokens) + sizes["head"] * resp),
        "teacher_flop": 2 * (sizes["body"] * BATCH * (teacher + response_tokens) + sizes["head"] * resp),
        "generate_bytes": 2 * (sizes["body"] + sizes["head"]) * response_tokens,
        "optimizer_bytes": 4 * 7 * sizes["params"],
    }


def run_limits(model: str, repeats: int) -> dict:
    """This machine's limits at the model's shapes: the bf16 matmul rate over one decoder layer's linear layers
    and the vocabulary head (M = a step's tokens), and the memory bandwidth of a large copy (bytes read + written)."""
    import torch
    from transformers import AutoConfig

    from opcd.core import models

    c = AutoConfig.from_pretrained(models.resolve(model))
    h, kv = c.hidden_size, c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, c.intermediate_size), (h, c.intermediate_size)]
    shapes += [(c.intermediate_size, h)]
    tokens = BATCH * 80  # about a step's prompt + response tokens
    layer = [(torch.randn(tokens, k).bfloat16(), torch.randn(n, k).bfloat16()) for k, n in shapes]
    head = (torch.randn(BATCH * NEW_TOKENS, h).bfloat16(), torch.randn(c.vocab_size, h).bfloat16())
    flop = 0.0
    began = None
    for i in range(repeats + 1):  # the first round warms up
        if i == 1:
            began, flop = time.perf_counter(), 0.0
        for x, w in [*layer, head]:
            torch.nn.functional.linear(x, w)
            flop += 2 * x.shape[0] * x.shape[1] * w.shape[0]
    matmul = flop / (time.perf_counter() - began)
    src = torch.ones(1 << 28, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    began = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return {"matmul_flops": matmul, "bandwidth": 2 * src.numel() * repeats / (time.perf_counter() - began)}


def run_trl(model: str, ctx_tokens: int, steps: int, bf16: bool) -> dict:
    from transformers import AutoTokenizer

    from opcd.core import models

    path = models.resolve(model)
    context = context_of(ctx_tokens, AutoTokenizer.from_pretrained(path))
    times, _ = trl_step_times(path, PROMPTS, context, steps=steps, batch=BATCH, new_tokens=NEW_TOKENS, bf16=bf16)
    return {"step_s": statistics.median(times[1:]), "peak_mib": peak_mib()}


def trl_step_times(
    path, prompts: list[str], context: str, *, steps: int, batch: int, new_tokens: int, bf16: bool, cpu: bool = True
) -> tuple[list[float], list[float]]:
    """TRL's SDFTTrainer doing opcd's work (see the module's docstring) for `steps` steps: each step's seconds and
    its mean response length in tokens. Also the GPU check's TRL row (`benchmarks/gpu_check.py`, `cpu=False`)."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", truncation_side="left")
    student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}], "privileged_context": context} for p in prompts]
    )
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not cpu:
                torch.cuda.synchronize()
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if not cpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.began)

    args = SDFTConfig(
        output_dir=tempfile.mkdtemp(),
        distillation_mode="topk_logits",
        distillation_topk=256,
        distillation_alpha=1.0,
        distillation_add_tail=False,
        teacher_model_kind="base",
        teacher_prompt_template="{privileged_context}\n\n{prompt}",
        generate_from_teacher=False,
        num_generations=1,
        max_completion_length=new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        # TRL cuts prompts (the teacher's too) to their last 512 tokens by default; the same work means no cut
        max_prompt_length=None,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=1e-5,
        max_steps=steps,
        gradient_checkpointing=False,
        bf16=bf16,
        use_cpu=cpu,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=0,
    )
    trainer = SDFTTrainer(model=student, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return times, lengths


def run_teacher_scoring(model: str, ctx_tokens: int, repeats: int) -> dict:
    """Teacher scoring of one micro-batch (8 prompts + 32-token responses): no context, and a long context uncached
    or on top of the cached prefix (the cache is filled once beforehand, as it is once per run in training)."""
    import torch

    from opcd.config import DataConfig
    from opcd.core import models
    from opcd.core.prompts import PromptRenderer
    from opcd.core.rollout import autocast
    from opcd.core.scoring import PrefixCache, grouped_hidden

    tokenizer = models.load_tokenizer(model)
    teacher = models.load_model(model, "bf16").eval()
    renderer = PromptRenderer(tokenizer, DataConfig())
    gen = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, 5000, (NEW_TOKENS,), generator=gen).tolist() for _ in range(BATCH)]
    out = {}
    for label, ctx, cache in [("none", 0, None), ("uncached", ctx_tokens, None), ("cached", ctx_tokens, PrefixCache())]:
        context = context_of(ctx, tokenizer)
        pairs = [renderer.render([{"role": "user", "content": p}], context) for p in PROMPTS[:BATCH]]
        if label == "none":  # the student's side: the plain prompt, no context at all
            prompts, lens = [p.student_ids for p in pairs], [0] * BATCH
        else:
            prompts, lens = [p.teacher_ids for p in pairs], [p.teacher_prefix for p in pairs]
        args = (teacher, prompts, responses, lens, tokenizer.pad_token_id, cache)
        with torch.no_grad(), autocast("bf16"):
            grouped_hidden(*args)  # warm-up (and fills the cache)
            began = time.perf_counter()
            for _ in range(repeats):
                grouped_hidden(*args)
        out[f"{label}_s"] = (time.perf_counter() - began) / repeats
        out[f"{label}_prompt_tokens"] = sum(map(len, prompts)) / BATCH
    return out


# ---- the parent: run everything, tabulate, plot ------------------------------------------------------------------


def child(kind: str, *args) -> dict:
    """One configuration in its own process: opcd's under mimalloc, as the `opcd` command runs (opcd/core/heap.py),
    TRL's as Python starts it (glibc's default allocator)."""
    from opcd.core import heap

    cmd = [sys.executable, __file__, "--one", json.dumps([kind, *args])]
    env = None if kind == "trl" else heap.preload_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models_ = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models_), figsize=(5 * len(models_), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models_, strict=True):
        sub = [r for r in rows if r["model"] == model]
        xs = range(len(sub))
        ax.bar([x - 0.2 for x in xs], [r["trl_s"] for r in sub], width=0.4, label="TRL SDFTTrainer")
        ax.bar([x + 0.2 for x in xs], [r["opcd_s"] for r in sub], width=0.4, label="opcd")
        ax.set_xticks(list(xs), [f"ctx {r['ctx']}" for r in sub])
        ax.set_ylabel("median step time (s)")
        ax.set_title(model)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smollm2 only, 3 steps")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--models", nargs="+", help="only these packaged models")
    parser.add_argument("--contexts", nargs="+", type=int, default=[0, 512, 2048], help="context lengths to compare")
    parser.add_argument("--skip-extras", action="store_true", help="no teacher-scoring and LoRA-memory runs")
    args = parser.parse_args()
    if args.one:
        kind, *rest = json.loads(args.one)
        fn = {"opcd": run_opcd, "trl": run_trl, "scoring": run_teacher_scoring, "limits": run_limits}[kind]
        print(json.dumps(fn(*rest)), flush=True)
        return

    began = time.time()
    models_ = ["smollm2-135m-instruct"] if args.quick else ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    models_ = args.models or models_
    steps = 3 if args.quick else args.steps
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"vs_trl": [], "breakdown": [], "scoring": [], "lora": [], "limits": {}}
    for model in models_:
        report["limits"][model] = child("limits", model, 5)
        for ctx in args.contexts:
            ours = child("opcd", model, ctx, steps, ["loss.estimator=topk"])  # TRL's loss: student top-256
            row = {"model": model, "ctx": ctx, "opcd_s": ours["step_s"], "opcd_mib": ours["peak_mib"]}
            if not args.skip_trl:
                theirs = child("trl", model, ctx, steps, True)
                row.update(trl_s=theirs["step_s"], trl_mib=theirs["peak_mib"])
                row.update(time_ratio=row["opcd_s"] / row["trl_s"], mem_ratio=row["opcd_mib"] / row["trl_mib"])
            report["vs_trl"].append(row)
            report["breakdown"].append({"model": model, "ctx": ctx, **ours})
            print(json.dumps(row), flush=True)
        if args.skip_extras:
            continue
        report["scoring"].append({"model": model, "ctx": 2048, **child("scoring", model, 2048, 3)})
        lora = ["model.lora_rank=16"]
        opcd_lora = child("opcd", model, 0, steps, lora)
        student_only = child("opcd", model, 0, steps, [*lora, "loss.mode=sft"])
        report["lora"].append(
            {
                "model": model,
                "opcd_lora_mib": opcd_lora["peak_mib"],
                "student_only_mib": student_only["peak_mib"],
                "ratio": opcd_lora["peak_mib"] / student_only["peak_mib"],
            }
        )
    report["wall_s"] = time.time() - began
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=1))
    md = tables(report)
    (RESULTS / "bench.md").write_text(md)
    if report["vs_trl"] and "trl_s" in report["vs_trl"][0]:
        plot(report["vs_trl"], RESULTS / "bench.png")
    print(md)


def tables(report: dict) -> str:
    out = [
        "### opcd vs TRL SDFTTrainer (median step time, peak RSS)",
        "",
        "| model | context tokens | TRL s/step | opcd s/step | time ratio | TRL MiB | opcd MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["vs_trl"]:
        if "trl_s" in r:
            out.append(
                f"| {r['model']} | {r['ctx']} | {r['trl_s']:.1f} | {r['opcd_s']:.1f} | {r['time_ratio']:.2f} | "
                f"{r['trl_mib']:.0f} | {r['opcd_mib']:.0f} | {r['mem_ratio']:.2f} |"
            )
        else:
            out.append(f"| {r['model']} | {r['ctx']} | – | {r['opcd_s']:.1f} | – | – | {r['opcd_mib']:.0f} | – |")
    out += [
        "",
        "### opcd step breakdown (median seconds per step)",
        "",
        "| model | context | generate | teacher | student fwd+bwd | optimizer | other | step | other share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["breakdown"]:
        out.append(
            f"| {r['model']} | {r['ctx']} | {r['generate_s']:.2f} | {r['teacher_s']:.2f} | {r['student_s']:.2f} | "
            f"{r['optimizer_s']:.2f} | {r['other_s']:.3f} | {r['step_s']:.2f} | "
            f"{r['other_s'] / r['step_s']:.1%} |"
        )
    out += ["", *roofline(report)]
    out += [
        "",
        "### Teacher scoring of 8 prompts + 32-token responses (seconds)",
        "",
        "| model | no context | 2,048-token context, uncached | cached | cached / no context |",
        "|---|---|---|---|---|",
    ]
    for r in report["scoring"]:
        out.append(
            f"| {r['model']} | {r['none_s']:.2f} | {r['uncached_s']:.2f} | {r['cached_s']:.2f} | "
            f"{r['cached_s'] / r['none_s']:.2f} |"
        )
    out += [
        "",
        "### LoRA self-distillation (adapter-off teacher) vs student-only LoRA training (peak RSS)",
        "",
        "| model | OPCD + LoRA MiB | student-only LoRA MiB | ratio |",
        "|---|---|---|---|",
    ]
    for r in report["lora"]:
        out.append(f"| {r['model']} | {r['opcd_lora_mib']:.0f} | {r['student_only_mib']:.0f} | {r['ratio']:.2f} |")
    out.append(f"\nWall time: {report['wall_s'] / 60:.1f} min.")
    return "\n".join(out) + "\n"


def roofline(report: dict) -> list[str]:
    """Each part of the step against this machine's limit: matmul FLOP/s for the student and teacher passes, bytes/s
    for generation (weights read once per decoded token) and the optimizer."""
    out = [
        "### Roofline: each part of the step against this machine's limit",
        "",
        "| model | context | part | work per step | seconds | achieved | limit | share of the limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["breakdown"]:
        lim = report["limits"].get(r["model"])
        if lim is None or "student_flop" not in r:
            continue
        for part, work, unit, limit in [
            ("student fwd+bwd", r["student_flop"], "FLOP", lim["matmul_flops"]),
            ("teacher fwd", r["teacher_flop"], "FLOP", lim["matmul_flops"]),
            ("generate", r["generate_bytes"], "B", lim["bandwidth"]),
            ("optimizer", r["optimizer_bytes"], "B", lim["bandwidth"]),
        ]:
            achieved = work / r[f"{part.split()[0]}_s"]
            out.append(
                f"| {r['model']} | {r['ctx']} | {part} | {work / 1e9:.1f} G{unit} | {r[f'{part.split()[0]}_s']:.2f} | "
                f"{achieved / 1e9:.0f} G{unit}/s | {limit / 1e9:.0f} G{unit}/s | {achieved / limit:.0%} |"
            )
    return out


if __name__ == "__main__":
    main()
