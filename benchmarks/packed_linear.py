"""Packed bf16 weights on the CPU (`opcd.core.packing`): the same bits as `F.linear`, in less time.

Two tables, in one process, alone on the machine:
- one linear layer of each shape of Qwen2.5-Coder-0.5B, at 1, 8 and 30 rows: `F.linear` on a bf16 weight (oneDNN
  reorders the weight on every call) against the weight packed once, with whether the outputs are bit-identical;
- the packaged 0.5B's decoding as opcd runs it, packing off (`OPCD_PACKED_LINEAR=0`) and on, the packing itself
  timed in: greedy answers to the first 60 instruction-suite prompts (batches of 30, 128 tokens, as the evaluation
  asks them), and training rollouts (8 prompts × 32 tokens at T 1.0) from fp32 weights under bf16 autocast (full
  fine-tuning) and from the LoRA preset's student (rank 8 adapters on a bf16 base), with whether the tokens are
  identical. Three repeats each; the table gives the median. Under mimalloc, as the `opcd` command runs
  (`opcd/core/heap.py`): the script starts itself again with it preloaded.

    .venv/bin/python benchmarks/packed_linear.py       # about 5 min

Writes `benchmarks/results/packed_linear.{md,json,png}`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from opcd.config import DataConfig, ModelConfig, RolloutConfig
from opcd.core import heap, models
from opcd.core.prompts import PromptRenderer
from opcd.core.rollout import HFSampler
from opcd.core.setup import build_student
from opcd.tasks.ood import SUITES

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "qwen2.5-coder-0.5b-instruct"
SHAPES = {"q, o": (896, 896), "k, v": (896, 128), "gate, up": (896, 4864), "down": (4864, 896), "head": (896, 151936)}


def _clock(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def layer_rows() -> list[dict]:
    reorder, linear = torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
    rows = []
    for name, (k, n) in SHAPES.items():
        weight = (torch.randn(n, k) * 0.02).bfloat16()
        for m in (1, 8, 30):
            x = torch.randn(m, k).bfloat16()
            packed = reorder(weight, m)
            repeats = 20 if name == "head" else 200
            plain = _clock(lambda: F.linear(x, weight), repeats)  # noqa: B023
            fast = _clock(lambda: linear(x, packed, None, "none", [], ""), repeats)  # noqa: B023
            same = torch.equal(F.linear(x, weight), linear(x, packed, None, "none", [], ""))
            rows.append({"layer": name, "rows": m, "plain_ms": 1e3 * plain, "packed_ms": 1e3 * fast, "identical": same})
    return rows


def _decode(sampler: HFSampler, prompts: list[list[int]], seed: int) -> tuple[list[float], list[float], bool]:
    """Seconds for each of three calls with packing off and on, and whether every call gave the same tokens."""
    times: dict[str, list[float]] = {"0": [], "1": []}
    answers = []
    for _ in range(3):
        for flag in ("0", "1"):
            os.environ["OPCD_PACKED_LINEAR"] = flag
            start = time.perf_counter()
            answers.append(sampler.generate(prompts, seed))
            times[flag].append(time.perf_counter() - start)
    os.environ.pop("OPCD_PACKED_LINEAR")
    return times["0"], times["1"], all(a == answers[0] for a in answers)


def decoding_rows() -> list[dict]:
    tokenizer = models.load_tokenizer(MODEL)
    renderer = PromptRenderer(tokenizer, DataConfig(prompts="unused"))
    items = SUITES["instructions"][0](0)[:60]
    prompts = [renderer.student_ids([{"role": "user", "content": item.prompt}]) for item in items]
    runs = {
        "greedy, 60 prompts × 128 tokens (batches of 30), bf16 weights": (
            models.load_model(MODEL, "bf16"),
            RolloutConfig.greedy(128, batch_size=30),
            prompts,
        ),
        "sampled, 8 × 32 tokens, fp32 weights under bf16 autocast": (
            models.load_model(MODEL, "fp32"),
            RolloutConfig(temperature=1.0, max_new_tokens=32, batch_size=8),
            prompts[:8],
        ),
        "sampled, 8 × 32 tokens, LoRA rank 8 on a bf16 base": (
            build_student(ModelConfig(student=MODEL, lora_rank=8), seed=0),
            RolloutConfig(temperature=1.0, max_new_tokens=32, batch_size=8),
            prompts[:8],
        ),
    }
    rows = []
    for name, (model, rollout, asked) in runs.items():
        sampler = HFSampler.for_model(model, tokenizer, rollout, "bf16")
        plain, packed, same = _decode(sampler, asked, seed=1)
        rows.append({"decoding": name, "plain_s": plain, "packed_s": packed, "identical": same})
        print(rows[-1], flush=True)
    return rows


def write(layers: list[dict], decoding: list[dict]) -> None:
    lines = [
        "| layer (in → out) | rows | F.linear ms | packed ms | speed-up | identical |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['layer']} {SHAPES[r['layer']][0]} → {SHAPES[r['layer']][1]} | {r['rows']} | {r['plain_ms']:.3f} | "
            f"{r['packed_ms']:.3f} | {r['plain_ms'] / r['packed_ms']:.1f}× | {r['identical']} |"
            for r in layers
        ),
        "",
        "| decoding (Qwen2.5-Coder-0.5B) | packing off, s | packing on, s (packing in) | speed-up | same tokens |",
        "|---|---|---|---|---|",
    ]
    for r in decoding:
        plain, packed = statistics.median(r["plain_s"]), statistics.median(r["packed_s"])
        lines.append(f"| {r['decoding']} | {plain:.2f} | {packed:.2f} | {plain / packed:.2f}× | {r['identical']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "packed_linear.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "packed_linear.json").write_text(json.dumps({"layers": layers, "decoding": decoding}, indent=1) + "\n")
    print("\n".join(lines))
    plot(decoding)


def plot(decoding: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    names = [r["decoding"].replace(", ", ",\n", 1) for r in decoding]
    y = range(len(decoding))
    ax.barh([i + 0.2 for i in y], [statistics.median(r["plain_s"]) for r in decoding], 0.4, label="F.linear")
    ax.barh([i - 0.2 for i in y], [statistics.median(r["packed_s"]) for r in decoding], 0.4, label="packed once")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set_xlabel("seconds per call (median of 3)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "packed_linear.png", dpi=120)


def main() -> None:
    env = None if os.environ.get("OPCD_RELAUNCHED") else heap.preload_env()
    if env is not None and not heap.mimalloc_loaded():
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**env, "OPCD_RELAUNCHED": "1"})
    print("allocator:", heap.configure(), flush=True)
    torch.manual_seed(0)
    write(layer_rows(), decoding_rows())


if __name__ == "__main__":
    main()
