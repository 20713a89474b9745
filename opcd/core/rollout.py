"""Rollouts: sample responses to token-id prompts, and where a training step's rollouts come from.

A `RolloutSource` is what the training loop trains on: each step it is handed the drawn item indices and a `Policy`
(who samples: the student on its own prompts, or the teacher on its prompts with the context) and returns the
rollouts. The default source is the rows of the prompts file (`PromptSource`); applications add their own (game
episodes) without touching the loop. Hugging Face `generate` is the default (and CPU) sampler; greedy decoding
(evaluation) runs its own loop that drops each row once it has ended.

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

from opcd.config import DataConfig, RolloutConfig
from opcd.core.data import load_examples
from opcd.core.packing import packed_linears
from opcd.core.prompts import PromptRenderer, check_lengths
from opcd.core.scoring import cache_kwarg, decoder_of


@dataclass
class Rollout:
    example: int  # index into the run's examples
    student_prompt: list[int]
    teacher_prompt: list[int]
    teacher_prefix: int  # leading teacher-prompt tokens shared by every prompt with this context
    response: list[int]
    finished: bool  # ended with EOS (False: cut at max_new_tokens)
    by_teacher: bool = False  # answered by the teacher with the context (a mixed OPCD step, `loss.teacher_share`)


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], seed: int, first_chunk: int = 0) -> list[tuple[list[int], bool]]:
        """One (response ids, finished) per prompt."""


def step_seed(seed: int, step: int) -> int:
    """The seed of step (or problem) `step` of a run seeded with `seed`: every draw of a run derives from these."""
    return seed * 1_000_003 + step


@dataclass(frozen=True)
class Policy:
    """Who answers a step's prompts: the student on its own prompts (`on_policy`), or the teacher on the teacher's
    prompts, with the context (the off-policy modes)."""

    sampler: Sampler
    on_policy: bool


class RolloutSource(Protocol):
    """Where a training step's rollouts come from."""

    size: int  # how many items each step's batch is drawn from
    even_across_ranks: bool  # every rank gets the same number of rollouts per step (sharded weights need it)

    def check_lengths(self, window: int, max_new_tokens: int, whose: str = "the model's") -> None:
        """Refuse, before step 1, prompts that cannot hold a full response within a model's window."""

    def draw(
        self, policy: Policy, indices: list[int], seed: int, first_chunk: int, rank: int
    ) -> tuple[list[Rollout], dict[str, float]]:
        """This rank's rollouts for the drawn item indices, and counts (summed over ranks, logged per drawn item as
        `rollout/NAME`). `first_chunk`: the global index of this rank's first generation chunk; `rank`: this rank."""


class PromptSource:
    """The default source: the examples of `data.prompts`, each drawn item answered once."""

    even_across_ranks = True

    def __init__(self, data: DataConfig, tokenizer):
        self.examples = load_examples(data)
        renderer = PromptRenderer(tokenizer, data)
        self.pairs = [renderer.render(e.messages, e.context) for e in self.examples]
        self.size = len(self.examples)

    def check_lengths(self, window: int, max_new_tokens: int, whose: str = "the model's") -> None:
        check_lengths(self.pairs, [e.source for e in self.examples], window, max_new_tokens, whose)

    def draw(
        self, policy: Policy, indices: list[int], seed: int, first_chunk: int, rank: int
    ) -> tuple[list[Rollout], dict[str, float]]:
        pairs = [self.pairs[i] for i in indices]
        prompts = [p.student_ids if policy.on_policy else p.teacher_ids for p in pairs]
        results = policy.sampler.generate(prompts, seed, first_chunk)
        return [
            Rollout(i, p.student_ids, p.teacher_ids, p.teacher_prefix, response, finished)
            for i, p, (response, finished) in zip(indices, pairs, results, strict=True)
        ], {}


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
    """Batched sampling with `model.generate` (greedy: `_greedy`), prompts left-padded in one batch per call."""

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
        self.rows = rows
        if rows is not None:
            whole = model.get_output_embeddings().weight.shape[0]
            self.config.suppress_tokens = list(range(rows, whole)) or None

    @classmethod
    def for_model(cls, model, tokenizer, rollout: RolloutConfig, dtype: str) -> HFSampler:
        """A sampler that stops at the model's own EOS ids and pads with the tokenizer's pad id."""
        return cls(model, rollout, eos_ids(tokenizer, model), tokenizer.pad_token_id, dtype)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], seed: int, first_chunk: int = 0) -> list[tuple[list[int], bool]]:
        """Chunks of `batch_size` prompts, each seeded by its index (`first_chunk` + k), so a rank that generates
        chunks 2-3 of a step draws exactly what a single process draws for them."""
        was_training = self.model.training
        self.model.eval()
        # Hugging Face applies the head to the prompt's last position, a strided view; for weights that need no
        # gradient, torch's matmul then copies the whole vocabulary head once per row (2.4x slower sampling of the
        # 0.5B: benchmarks/sampling_head.py), so the head is handed a contiguous copy instead
        hook = self.model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        size = self.batch_size or len(prompts)
        # the same bits with each weight reordered once per call instead of once per token (not for sharded weights)
        packing = nullcontext() if self.synced else packed_linears(self.model, rows=min(size, len(prompts)))
        try:
            with packing:
                results = self._chunks(prompts, seed, first_chunk, size)
        finally:
            hook.remove()
        self.model.train(was_training)
        return results

    def _chunks(self, prompts: list[list[int]], seed: int, first_chunk: int, size: int) -> list[tuple[list[int], bool]]:
        results = []
        for k, start in enumerate(range(0, len(prompts), size)):
            chunk = first_chunk + k
            torch.manual_seed(seed if chunk == 0 else seed * 65_537 + chunk)
            group = prompts[start : start + size]
            width = max(map(len, group))
            device = device_of(self.model)
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in group], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
            with autocast(self.dtype, device):
                if self.config.do_sample or self.synced:
                    out = self.model.generate(
                        input_ids=ids, attention_mask=mask, generation_config=self.config, synced_gpus=self.synced
                    )
                    results += [cut_at_eos(row[width:].tolist(), self.eos_ids) for row in out]
                else:
                    results += [cut_at_eos(row, self.eos_ids) for row in self._greedy(ids, mask)]
        return results

    def _greedy(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Greedy decoding that drops each row from the batch (and its KV cache) once it has produced EOS. Hugging
        Face's `generate` computes every row until the longest ends; the tokens are the same (the model's own forward
        with the same cache, mask and positions; `tests/test_rollout.py`), the work shrinks with the answers that
        end early."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        kwargs = cache_kwarg(decoder_of(self.model), cache)
        eos = torch.tensor(sorted(self.eos_ids), device=ids.device)
        alive = torch.arange(ids.shape[0], device=ids.device)  # original row of each row still decoding
        tokens: list[list[int]] = [[] for _ in range(ids.shape[0])]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count the real tokens only
        step = ids
        for _ in range(self.config.max_new_tokens):
            logits = self.model(
                input_ids=step, attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs
            ).logits[:, -1]
            if self.rows is not None:
                logits[:, self.rows :] = float("-inf")  # a teacher's padded rows, which the student does not have
            chosen = logits.argmax(-1)
            for row, token in zip(alive.tolist(), chosen.tolist(), strict=True):
                tokens[row].append(token)
            going = ~torch.isin(chosen, eos)
            if not going.any():
                break
            if not going.all():
                keep = going.nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, chosen, mask, positions = alive[keep], chosen[keep], mask[keep], positions[keep]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=-1)
            positions = positions[:, -1:] + 1
            step = chosen[:, None]
        return tokens


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])
