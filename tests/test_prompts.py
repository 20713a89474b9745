"""Student vs teacher prompts on the real chat templates, and token-by-token alignment of the response."""

from __future__ import annotations

import pytest
import torch

from opcd.config import DataConfig
from opcd.core.prompts import PromptRenderer, check_lengths, default_system_text
from opcd.core.scoring import make_batch, response_hidden, response_logprobs
from opcd.errors import OpcdError

CONTEXT = "Answer in French."
MESSAGES = [{"role": "user", "content": "What is the capital of Italy?"}]


@pytest.fixture(params=["smol", "qwen"])
def tokenizer(request, smol_tokenizer, qwen_tokenizer):
    return {"smol": smol_tokenizer, "qwen": qwen_tokenizer}[request.param]


def test_default_system_text_detected(smol_tokenizer, qwen_tokenizer):
    assert default_system_text(smol_tokenizer).startswith("You are a helpful AI assistant named SmolLM")
    assert default_system_text(qwen_tokenizer).startswith("You are Qwen, created by Alibaba Cloud")


def test_student_prompt_is_the_plain_chat_template(tokenizer):
    pair = PromptRenderer(tokenizer, DataConfig()).render(MESSAGES, CONTEXT)
    plain = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert pair.student_ids == tokenizer(plain, add_special_tokens=False).input_ids
    assert CONTEXT not in tokenizer.decode(pair.student_ids)


def test_context_is_the_only_difference(tokenizer):
    """System placement keeps the template's default system text on both sides and appends the context."""
    pair = PromptRenderer(tokenizer, DataConfig()).render(MESSAGES, CONTEXT)
    student, teacher = tokenizer.decode(pair.student_ids), tokenizer.decode(pair.teacher_ids)
    default = default_system_text(tokenizer)
    assert teacher == student.replace(default, default + "\n\n" + CONTEXT, 1)
    # no duplicated BOS or other special token at the start
    assert pair.teacher_ids[0] == pair.student_ids[0]
    if tokenizer.bos_token_id is not None:
        assert pair.teacher_ids.count(tokenizer.bos_token_id) == pair.student_ids.count(tokenizer.bos_token_id)


def test_user_placement_and_own_system_message(tokenizer):
    data = DataConfig(placement="user", user_template="Experience:\n{context}\n\nProblem: {prompt}")
    pair = PromptRenderer(tokenizer, data).render(MESSAGES, CONTEXT)
    teacher = tokenizer.decode(pair.teacher_ids)
    assert f"Experience:\n{CONTEXT}\n\nProblem: {MESSAGES[0]['content']}" in teacher
    own = [{"role": "system", "content": "Be brief."}, *MESSAGES]
    pair = PromptRenderer(tokenizer, DataConfig()).render(own, CONTEXT)
    assert "Be brief.\n\nAnswer in French." in tokenizer.decode(pair.teacher_ids)
    assert "Answer in French" not in tokenizer.decode(pair.student_ids)


def test_without_keeping_default_system(qwen_tokenizer):
    pair = PromptRenderer(qwen_tokenizer, DataConfig(keep_default_system=False)).render(MESSAGES, CONTEXT)
    teacher = qwen_tokenizer.decode(pair.teacher_ids)
    assert teacher.startswith(f"<|im_start|>system\n{CONTEXT}<|im_end|>")


def test_too_long_prompt_is_named(qwen_tokenizer):
    pair = PromptRenderer(qwen_tokenizer, DataConfig()).render(MESSAGES, "word " * 300)
    with pytest.raises(OpcdError, match=r"data.jsonl:7: prompt \+ context is \d+ tokens"):
        check_lengths([pair], ["data.jsonl:7"], limit=256, max_new_tokens=16)


def test_response_alignment_token_by_token(smol_tokenizer, tiny_model):
    """The response ids sit at the same columns in both inputs, and the logits used for position t are exactly the
    ones an unpadded forward pass uses to predict response token t."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    renderer = PromptRenderer(smol_tokenizer, DataConfig())
    questions = ["Hi", "Explain how the tides work, in detail please.", "2+2?"]
    pairs = [renderer.render([{"role": "user", "content": q}], CONTEXT) for q in questions]
    responses = [smol_tokenizer("Bonjour !<|im_end|>", add_special_tokens=False).input_ids, [42, 7], [5, 6, 7, 8, 9]]
    pad = smol_tokenizer.pad_token_id
    s_batch = make_batch([p.student_ids for p in pairs], responses, pad)
    t_batch = make_batch([p.teacher_ids for p in pairs], responses, pad)
    for batch in (s_batch, t_batch):
        cols = slice(batch.prompt_width, batch.prompt_width + batch.response_ids.shape[1])
        torch.testing.assert_close(
            batch.input_ids[:, cols][batch.response_mask], batch.response_ids[batch.response_mask]
        )
    assert torch.equal(s_batch.response_ids, t_batch.response_ids)
    assert torch.equal(s_batch.response_mask, t_batch.response_mask)
    for batch, prompts in ((s_batch, [p.student_ids for p in pairs]), (t_batch, [p.teacher_ids for p in pairs])):
        got = response_logprobs(model, batch)
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + response])).logits[0]
            logp = torch.log_softmax(logits, -1)
            want = torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])
            torch.testing.assert_close(got[row, : len(response)], want, atol=1e-5, rtol=1e-5)
        assert response_hidden(model, batch).shape[1] == max(map(len, responses))
