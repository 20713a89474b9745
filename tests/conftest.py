"""Shared fixtures: tiny random models that use a real tokenizer and chat template (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from opcd.core import models

TOY_CONTEXT = "Always answer like a pirate and start with 'Arr!'."


def make_tiny_model(
    path: Path,
    tokenizer,
    *,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    init_std: float = 0.2,
    vocab_size: int | None = None,
    max_positions: int = 4096,
) -> Path:
    """A randomly initialised Llama with the given tokenizer's vocabulary, saved as a HF directory.

    The large init makes its next-token distributions peaked and sensitive to the prompt (at the usual 0.02 they
    are almost uniform, and the context barely moves them), so a context gives the teacher something to teach."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),  # more: padded output rows, as larger checkpoints have
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=init_std,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    return models.load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen_tokenizer():
    return models.load_tokenizer("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smol_tokenizer) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", smol_tokenizer)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    questions = [
        "What is the capital of France?",
        "How do plants make food?",
        "Give me a tip for sleeping well.",
        "What is 12 times 7?",
        "Why is the sky blue?",
        "How do I boil an egg?",
        "What is a prime number?",
        "Name a famous painter.",
        "How far is the Moon?",
        "What does a compiler do?",
        "How do bees make honey?",
        "What is the tallest mountain?",
    ]
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    return path


def tiny_overrides(model: Path, prompts: Path, run_dir: Path, **extra) -> list[str]:
    """Config overrides for a fast run on the tiny model."""
    base = {
        "model.student": str(model),
        "model.dtype": "fp32",
        "data.prompts": str(prompts),
        "data.context": TOY_CONTEXT,
        "rollout.max_new_tokens": 6,
        "train.run_dir": str(run_dir),
        "train.steps": 2,
        "train.prompts_per_step": 4,
        "train.micro_batch_size": 2,
        "train.lr": 1e-3,
        "train.save_every": 0,
        "train.report_to": "none",
        "loss.chunk_size": 3,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
