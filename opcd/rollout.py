"""Rollouts: sample responses to token-id prompts. Hugging Face `generate` is the default (and CPU) backend.

A `Sampler` speaks token ids only. Responses are cut after the first EOS (kept: the model must learn to stop) and
padding is dropped, so a response is exactly the tokens the model produced. Sampling uses *only* the settings given
here: the model's own `generation_config` (Qwen's ships repetition_penalty and top_k) would make the samples come
from a distribution other than the one the loss assumes.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch

from opcd.config import RolloutConfig


@dataclass
class Rollout:
    example: int  # index into the run's examples
    student_prompt: list[int]
    teacher_prompt: list[int]
    teacher_prefix: int  # leading teacher-prompt tokens shared by every prompt with this context
    response: list[int]
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], seed: int, first_chunk: int = 0) -> list[tuple[list[int], bool]]:
        """One (response ids, finished) per prompt."""


def eos_ids(tokenizer, model) -> set[int]:
    """The tokenizer's EOS plus any the model's generation config adds (Qwen ends turns with `<|im_end|>`)."""
    ids = {tokenizer.eos_token_id}
    extra = model.generation_config.eos_token_id
    ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    return ids


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1], True
    return tokens, False


def autocast(dtype: str, device: torch.device | str = "cpu"):
    """bf16 autocast on the device's kind (cpu, cuda); fp32 runs as it is."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def resolve_device(name: str) -> torch.device:
    """`auto`: this process's GPU (`LOCAL_RANK` under a launcher) when CUDA is there, else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class HFSampler:
    """Batched sampling with `model.generate`, prompts left-padded in one batch per call."""

    def __init__(
        self,
        model,
        rollout: RolloutConfig,
        eos_ids: set[int],
        pad_id: int,
        dtype: str,
        synced: bool = False,
        rows: int | None = None,
    ):
        """`synced`: the model is sharded over ranks (FSDP), so every rank keeps stepping until all are done.
        `rows`: sample only ids below it (a teacher whose padded output rows the student does not have)."""
        from transformers import GenerationConfig

        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.dtype = dtype
        self.batch_size = rollout.batch_size
        self.synced = synced
        greedy = rollout.temperature == 0  # evaluation only; training validates temperature > 0
        self.config = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else rollout.temperature,
            top_p=None if greedy else rollout.top_p,
            top_k=None if greedy else rollout.top_k,
            max_new_tokens=rollout.max_new_tokens,
            eos_token_id=sorted(eos_ids),
            pad_token_id=pad_id,
            repetition_penalty=1.0,
        )
        if rows is not None:
            whole = model.get_output_embeddings().weight.shape[0]
            self.config.suppress_tokens = list(range(rows, whole)) or None

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed: int, first_chunk: int = 0) -> list[tuple[list[int], bool]]:
        """Chunks of `batch_size` prompts, each seeded by its index (`first_chunk` + k), so a rank that generates
        chunks 2-3 of a step draws exactly what a single process draws for them."""
        was_training = self.model.training
        self.model.eval()
        results = []
        size = self.batch_size or len(prompts)
        for k, start in enumerate(range(0, len(prompts), size)):
            chunk = first_chunk + k
            torch.manual_seed(seed if chunk == 0 else seed * 65_537 + chunk)
            group = prompts[start : start + size]
            width = max(map(len, group))
            device = device_of(self.model)
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in group], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
            with autocast(self.dtype, device):
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=self.config, synced_gpus=self.synced
                )
            results += [cut_at_eos(row[width:].tolist(), self.eos_ids) for row in out]
        self.model.train(was_training)
        return results
