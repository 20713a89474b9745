"""Sampling: greedy decoding drops the rows that have ended and gives Hugging Face `generate`'s tokens."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from opcd.config import RolloutConfig
from opcd.core.rollout import HFSampler, cut_at_eos


def _generate(model, prompts: list[list[int]], eos: set[int], pad: int, new: int) -> list[tuple[list[int], bool]]:
    """Hugging Face's own greedy `generate` on one left-padded batch: the reference."""
    from transformers import GenerationConfig

    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(do_sample=False, max_new_tokens=new, eos_token_id=sorted(eos), pad_token_id=pad)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [cut_at_eos(row[width:].tolist(), eos) for row in out]


def test_greedy_decoding_drops_ended_rows_and_gives_generates_tokens(tiny_model, smol_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).requires_grad_(False).eval()
    pad, new = smol_tokenizer.pad_token_id, 12
    texts = ("Hello there, how are you?", "Hi", "What is the capital of France?", "Why?", "Name a famous painter.")
    prompts = [smol_tokenizer(t).input_ids for t in texts]
    never = {len(smol_tokenizer) - 1}  # a token no answer contains: every row runs to the budget
    free = _generate(model, prompts, never, pad, new)
    assert all(len(tokens) == new for tokens, _ in free)
    # an EOS that ends some answers early and not others, so the batch must shrink part way
    seen = sorted({t for tokens, _ in free for t in tokens})
    eos = {next(t for t in seen if 0 < sum(t in tokens[: new - 1] for tokens, _ in free) < len(prompts))}

    sizes = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: sizes.append(out.shape[0]))
    greedy = RolloutConfig(temperature=0, max_new_tokens=new)
    ours = HFSampler(model, greedy, eos, pad, "fp32").generate(prompts, seed=0)
    sizes_ours, sizes[:] = list(sizes), []
    assert ours == _generate(model, prompts, eos, pad, new)
    assert ours == [cut_at_eos(tokens, eos) for tokens, _ in free]  # the same answers, cut at the first EOS
    assert any(done for _, done in ours) and not all(done for _, done in ours)
    assert sizes_ours[0] == len(prompts) and sizes_ours[-1] < len(prompts)  # ended rows left the batch
    assert sizes == [len(prompts)] * len(sizes)  # generate keeps every row to the end
