"""vLLM rollouts (`rollout.engine = "vllm"`, optional extra `opcd-lm[vllm]`): the student samples with vLLM.

The engine is colocated with the trainer: it lives in the training process, on the same GPU, with a share of its
memory (`rollout.vllm_gpu_memory`). Before every rollout the trainer's current weights are copied into the engine
(LoRA adapters merged first), so the samples come from the policy being trained, exactly as with `generate`. Sampling
uses only our settings: vLLM is told to ignore the model's generation config, EOS ids are the trainer's, and every
request carries its own seed. What goes into and comes out of the engine is built by plain functions
(`sampling_kwargs`, `engine_weights`, `parse_output`) that the CPU test suite checks; the engine calls themselves
need a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from opcd.config import RolloutConfig
from opcd.errors import OpcdError


def require_vllm():
    """The vllm module, or a one-line reason why these rollouts cannot run here."""
    try:
        import vllm
    except ImportError:
        raise OpcdError(
            "rollout.engine = 'vllm' needs vLLM: pip install 'opcd-lm[vllm]' (a CUDA machine), "
            "or use rollout.engine = 'hf'"
        ) from None
    if not torch.cuda.is_available():
        raise OpcdError("rollout.engine = 'vllm' needs a CUDA GPU and none is visible: use rollout.engine = 'hf'")
    return vllm


def sampling_kwargs(rollout: RolloutConfig, eos_ids: set[int], seed: int) -> dict:
    """vLLM `SamplingParams` arguments equal to the HF path's settings (top_k 0 = off is vLLM's -1)."""
    return {
        "n": 1,
        "temperature": rollout.temperature,
        "top_p": rollout.top_p,
        "top_k": rollout.top_k if rollout.top_k > 0 else -1,
        "max_tokens": rollout.max_new_tokens,
        "stop_token_ids": sorted(eos_ids),
        "repetition_penalty": 1.0,
        "seed": seed,
        "skip_special_tokens": False,
    }


def parse_output(token_ids, finish_reason: str | None, stop_reason, eos_ids: set[int]) -> tuple[list[int], bool]:
    """(response ids ending with the EOS that stopped it, finished): the same contract as the HF sampler."""
    ids = list(token_ids)
    finished = finish_reason == "stop"
    if finished and (not ids or ids[-1] not in eos_ids):
        if isinstance(stop_reason, int):  # vLLM may leave the stop token out of token_ids
            ids.append(stop_reason)
        else:
            ids.append(min(eos_ids))
    if not finished:  # cut at max_tokens; an EOS inside cannot happen (it would have stopped), but be exact
        cut = next((i for i, t in enumerate(ids) if t in eos_ids), None)
        if cut is not None:
            ids, finished = ids[: cut + 1], True
    return ids, finished


def _clean(name: str) -> str:
    """A PEFT parameter name as the plain model names it."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


@contextmanager
def engine_weights(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """(name, tensor) pairs of the model as a plain checkpoint names them; a LoRA model is merged for the duration."""
    peft = hasattr(model, "merge_adapter") and hasattr(model, "peft_config")
    if peft:
        model.merge_adapter()
    try:
        yield [(_clean(n), p.detach()) for n, p in model.named_parameters() if "lora_" not in n]
    finally:
        if peft:
            model.unmerge_adapter()


def _engine_model(llm):
    """The torch module inside a colocated vLLM engine (V1 in-process, or V0)."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    for path in (("worker", "model_runner", "model"), ("model_runner", "model")):
        target = worker
        try:
            for attr in path:
                target = getattr(target, attr)
            return target
        except AttributeError:
            continue
    raise OpcdError(
        "this vLLM version does not expose its model in-process; set VLLM_ENABLE_V1_MULTIPROCESSING=0 or use "
        "rollout.engine = 'hf'"
    )


class VLLMSampler:
    """Colocated vLLM engine for the student's rollouts; `sync(model)` before each step's `generate`."""

    def __init__(self, model_dir: str, rollout: RolloutConfig, eos_ids: set[int], dtype: str, seed: int):
        vllm = require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine must share our process
        self.vllm = vllm
        self.rollout = rollout
        self.eos_ids = eos_ids
        self.llm = vllm.LLM(
            model=model_dir,
            dtype="bfloat16" if dtype == "bf16" else "float32",
            gpu_memory_utilization=rollout.vllm_gpu_memory,
            generation_config="vllm",  # sampling defaults from vLLM, not the checkpoint (Qwen's repetition penalty)
            enable_prefix_caching=True,
            seed=seed,
        )

    @torch.no_grad()
    def sync(self, model) -> None:
        with engine_weights(model) as weights:
            _engine_model(self.llm).load_weights(weights)
        self.llm.reset_prefix_cache()  # cached keys/values belong to the old weights

    def generate(self, prompts: list[list[int]], seed: int, first_chunk: int = 0) -> list[tuple[list[int], bool]]:
        params = [
            self.vllm.SamplingParams(**sampling_kwargs(self.rollout, self.eos_ids, seed * 65_537 + first_chunk + i))
            for i in range(len(prompts))
        ]
        requests = [{"prompt_token_ids": p} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [
            parse_output(o.outputs[0].token_ids, o.outputs[0].finish_reason, o.outputs[0].stop_reason, self.eos_ids)
            for o in outputs
        ]
