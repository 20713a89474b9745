"""Every loss against a float64 brute-force loop, plus the properties the training loop relies on."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from opcd.core import losses

B, T, V = 2, 3, 7


def _logits(seed: int, shape=(B, T, V), scale: float = 2.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def _brute_reverse(s, t, k, renorm, temp, teacher_set=False, forward=False):
    """Loop over positions and vocabulary entries, straight from the formula."""
    out = torch.zeros(s.shape[:2], dtype=torch.float64)
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            ps = [math.exp(x) for x in torch.log_softmax(s[b, i] / temp, -1).tolist()]
            pt = [math.exp(x) for x in torch.log_softmax(t[b, i] / temp, -1).tolist()]
            ranker = pt if teacher_set else ps
            chosen = sorted(range(len(ps)), key=lambda v: -ranker[v])[: (k or len(ps))]
            zs, zt = (sum(ps[v] for v in chosen), sum(pt[v] for v in chosen)) if renorm else (1.0, 1.0)
            for v in chosen:
                a, c = ps[v] / zs, pt[v] / zt
                out[b, i] += c * (math.log(c) - math.log(a)) if forward else a * (math.log(a) - math.log(c))
    return out


@pytest.mark.parametrize("k", [None, 1, 3, V])
@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("temp", [1.0, 0.6])
def test_reverse_kl_matches_brute_force(k, renorm, temp):
    s, t = _logits(0), _logits(1)
    got = losses.token_reverse_kl(s, t, top_k=k, renormalize=renorm, temperature=temp)
    torch.testing.assert_close(got, _brute_reverse(s, t, k, renorm, temp))


@pytest.mark.parametrize("k", [None, 2, 5])
@pytest.mark.parametrize("renorm", [False, True])
@pytest.mark.parametrize("temp", [1.0, 0.7])
def test_forward_kl_matches_brute_force(k, renorm, temp):
    s, t = _logits(2), _logits(3)
    got = losses.token_forward_kl(s, t, top_k=k, renormalize=renorm, temperature=temp)
    torch.testing.assert_close(got, _brute_reverse(s, t, k, renorm, temp, teacher_set=True, forward=True))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_tail_bucket_matches_brute_force(k):
    s, t = _logits(4), _logits(5)
    want = torch.zeros(B, T, dtype=torch.float64)
    for b, i in itertools.product(range(B), range(T)):
        ps, pt = torch.softmax(s[b, i], -1), torch.softmax(t[b, i], -1)
        top = ps.topk(k).indices
        a = torch.cat([ps[top], (1 - ps[top].sum()).view(1)])
        c = torch.cat([pt[top], (1 - pt[top].sum()).view(1)])
        want[b, i] = (a * (a.log() - c.log())).sum()
    torch.testing.assert_close(losses.token_reverse_kl_tail(s, t, top_k=k), want)


def test_tail_bucket_with_whole_vocabulary_is_full_kl():
    s, t = _logits(6), _logits(7)
    torch.testing.assert_close(
        losses.token_reverse_kl_tail(s, t, top_k=V), losses.token_reverse_kl(s, t, top_k=None), atol=1e-6, rtol=1e-6
    )


def test_nll_and_sampled_logprobs():
    s, y = _logits(8), torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(s / 0.5, -1)
    want = torch.tensor([[-logp[b, i, y[b, i]].item() for i in range(T)] for b in range(B)], dtype=torch.float64)
    torch.testing.assert_close(losses.token_nll(s, y, temperature=0.5), want)


def test_reverse_kl_gradient_is_analytic():
    """The gradient flows through both p_s and log p_s; the teacher gets none; top-k indices are constants."""
    s, t = _logits(9).requires_grad_(), _logits(10).requires_grad_()
    losses.token_reverse_kl(s, t, top_k=3).sum().backward()
    assert t.grad is None or torch.all(t.grad == 0)
    ref = s.detach().clone().requires_grad_()
    logp_s, logp_t = torch.log_softmax(ref, -1), torch.log_softmax(t.detach(), -1)
    idx = logp_s.detach().topk(3, -1).indices
    a, c = logp_s.gather(-1, idx), logp_t.gather(-1, idx)
    (a.exp() * (a - c)).sum().backward()
    torch.testing.assert_close(s.grad, ref.grad)


def test_full_kl_zero_iff_equal_and_nonnegative():
    s = _logits(11)
    torch.testing.assert_close(
        losses.token_reverse_kl(s, s.clone(), top_k=None), torch.zeros(B, T, dtype=torch.float64)
    )
    for seed in range(5):
        assert torch.all(losses.token_reverse_kl(_logits(seed), _logits(seed + 50), top_k=None) > 0)
        assert torch.all(losses.token_reverse_kl_tail(_logits(seed), _logits(seed + 50), top_k=2) > 0)


def test_reward_to_go():
    r = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    torch.testing.assert_close(losses.reward_to_go(r, mask, 0.0), torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 0.0]]))
    torch.testing.assert_close(losses.reward_to_go(r, mask, 1.0), torch.tensor([[7.0, 6.0, 4.0], [2.0, 1.0, 0.0]]))
    torch.testing.assert_close(losses.reward_to_go(r, mask, 0.5), torch.tensor([[3.0, 4.0, 4.0], [1.5, 1.0, 0.0]]))


def test_reduction_weights():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    v = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 100.0, 100.0, 100.0]])
    token = losses.reduction_weights(mask, "token", total_tokens=4, total_sequences=2)
    assert (token * v).sum().item() == pytest.approx((1 + 2 + 3 + 5) / 4)
    seq = losses.reduction_weights(mask, "sequence", total_tokens=4, total_sequences=2)
    assert (seq * v).sum().item() == pytest.approx((6 / 3 + 5 / 1) / 2)


# ---- the chunked backward used by the trainer ------------------------------------------------------------------


def _head_setup(seed=0, b=3, r=5, h=4, v=11):
    g = torch.Generator().manual_seed(seed)
    hidden_s = torch.randn(b, r, h, generator=g, dtype=torch.float64)
    hidden_t = torch.randn(b, r, h, generator=g, dtype=torch.float64)
    w_s = torch.randn(v, h, generator=g, dtype=torch.float64)
    w_t = torch.randn(v, h, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)[:b, :r]
    ids = torch.randint(0, v, (b, r), generator=g)
    return hidden_s, hidden_t, w_s, w_t, mask, ids


def _chunked_grads(hidden_s, hidden_t, w_s, w_t, ids, weights, loss, chunk):
    body = torch.nn.Parameter(torch.ones(hidden_s.shape[-1], dtype=torch.float64))  # stands for the decoder
    head = torch.nn.Parameter(w_s.clone())
    values = losses.backward_chunked(
        hidden_s * body, hidden_t, lambda h: h @ head.T, lambda h: h @ w_t.T, ids, weights, loss, chunk
    )
    return values, body.grad, head.grad


LOSSES = {
    "topk": lambda s, t, y, pos: losses.token_reverse_kl(s, t, top_k=3),
    "full": lambda s, t, y, pos: losses.token_reverse_kl(s, t, top_k=None),
    "tail": lambda s, t, y, pos: losses.token_reverse_kl_tail(s, t, top_k=3),
    "forward": lambda s, t, y, pos: losses.token_forward_kl(s, t, top_k=3),
    "nll": lambda s, t, y, pos: losses.token_nll(s, y),
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_chunked_equals_unchunked(name, reduction):
    hidden_s, hidden_t, w_s, w_t, mask, ids = _head_setup()
    weights = losses.reduction_weights(mask, reduction, total_tokens=int(mask.sum()), total_sequences=3)
    ref = [_chunked_grads(hidden_s, hidden_t, w_s, w_t, ids, weights, LOSSES[name], 100)]
    # the one-chunk result against plain autograd over the whole tensor
    body = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    head = torch.nn.Parameter(w_s.clone())
    plain = LOSSES[name]((hidden_s * body) @ head.T, hidden_t @ w_t.T, ids, slice(None))
    (plain * weights).sum().backward()
    torch.testing.assert_close(ref[0][1], body.grad)
    torch.testing.assert_close(ref[0][2], head.grad)
    for chunk in (1, 2, 3):
        values, g_body, g_head = _chunked_grads(hidden_s, hidden_t, w_s, w_t, ids, weights, LOSSES[name], chunk)
        torch.testing.assert_close(values, ref[0][0])
        torch.testing.assert_close(g_body, ref[0][1])
        torch.testing.assert_close(g_head, ref[0][2])


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_micro_batch_split_invariance(reduction):
    """Gradients summed over micro-batches, weighted with the step's global counts, equal the one-batch gradient."""
    hidden_s, hidden_t, w_s, w_t, mask, ids = _head_setup(seed=1)
    kw = {"total_tokens": int(mask.sum()), "total_sequences": 3}
    whole = _chunked_grads(
        hidden_s, hidden_t, w_s, w_t, ids, losses.reduction_weights(mask, reduction, **kw), LOSSES["topk"], 2
    )
    g_body, g_head = 0, 0
    for rows in ([0], [1, 2]):
        weights = losses.reduction_weights(mask[rows], reduction, **kw)
        _, gb, gh = _chunked_grads(hidden_s[rows], hidden_t[rows], w_s, w_t, ids[rows], weights, LOSSES["topk"], 2)
        g_body, g_head = g_body + gb, g_head + gh
    torch.testing.assert_close(g_body, whole[1])
    torch.testing.assert_close(g_head, whole[2])


def test_padding_is_inert():
    """Whatever sits in masked positions changes neither the loss nor its gradient."""
    hidden_s, hidden_t, w_s, w_t, mask, ids = _head_setup(seed=2)
    weights = losses.reduction_weights(mask, "token", total_tokens=int(mask.sum()), total_sequences=3)
    a = _chunked_grads(hidden_s, hidden_t, w_s, w_t, ids, weights, LOSSES["topk"], 2)
    noisy_s, noisy_t = hidden_s.clone(), hidden_t.clone()
    noisy_s[~mask] = 1e3
    noisy_t[~mask] = -1e3
    b = _chunked_grads(noisy_s, noisy_t, w_s, w_t, ids, weights, LOSSES["topk"], 2)
    torch.testing.assert_close((a[0] * weights).sum(), (b[0] * weights).sum())
    torch.testing.assert_close(a[2], b[2])


def test_all_masked_gives_zero_gradient():
    hidden_s, hidden_t, w_s, w_t, mask, ids = _head_setup(seed=3)
    weights = losses.reduction_weights(torch.zeros_like(mask), "token", total_tokens=0, total_sequences=3)
    _, g_body, g_head = _chunked_grads(hidden_s, hidden_t, w_s, w_t, ids, weights, LOSSES["full"], 2)
    assert torch.all(g_body == 0) and torch.all(g_head == 0)


# ---- exact expectations by enumeration: V = 3 tokens, responses of 2 tokens ------------------------------------


def _policy_logits(theta1, theta2, y):
    """Logits of a 2-step policy: step 1 from theta1 [3], step 2 from theta2[y1] [3]. Returns [N, 2, 3]."""
    first = theta1.expand(y.shape[0], 3)
    second = theta2[y[:, 0]]
    return torch.stack([first, second], dim=1)


def _enumerate():
    g = torch.Generator().manual_seed(0)
    theta1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    theta2 = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    teacher1 = torch.randn(3, generator=g, dtype=torch.float64)
    teacher2 = torch.randn(3, 3, generator=g, dtype=torch.float64)
    y = torch.tensor(list(itertools.product(range(3), repeat=2)))  # all 9 responses
    return theta1, theta2, teacher1, teacher2, y


def _seq_logprob(logits, y):
    return torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_surrogate_discount0_matches_analytic_gradient(temperature):
    theta1, theta2, teacher1, teacher2, y = _enumerate()
    s_logits = _policy_logits(theta1, theta2, y)
    t_logits = _policy_logits(teacher1, teacher2, y)
    prob = _seq_logprob(s_logits / temperature, y).exp().detach()  # sampling distribution (temperature applied)
    mask = torch.ones_like(y, dtype=torch.bool)
    surrogate = losses.sampled_reverse_kl_surrogate(s_logits, t_logits, y, mask, discount=0.0, temperature=temperature)
    expected_grad = torch.autograd.grad((prob * surrogate.sum(-1)).sum(), (theta1, theta2), retain_graph=True)
    analytic = losses.token_reverse_kl(s_logits, t_logits, top_k=None, temperature=temperature)
    want = torch.autograd.grad((prob * analytic.sum(-1)).sum(), (theta1, theta2))
    for g, w in zip(expected_grad, want, strict=True):
        torch.testing.assert_close(g, w)


def test_sampled_surrogate_discount1_matches_sequence_kl_gradient():
    theta1, theta2, teacher1, teacher2, y = _enumerate()
    s_logits = _policy_logits(theta1, theta2, y)
    t_logits = _policy_logits(teacher1, teacher2, y)
    logp_seq = _seq_logprob(s_logits, y)
    mask = torch.ones_like(y, dtype=torch.bool)
    surrogate = losses.sampled_reverse_kl_surrogate(s_logits, t_logits, y, mask, discount=1.0)
    expected_grad = torch.autograd.grad(
        (logp_seq.exp().detach() * surrogate.sum(-1)).sum(), (theta1, theta2), retain_graph=True
    )
    # the exact sequence-level reverse KL, summed over all 9 responses
    seq_kl = (logp_seq.exp() * (logp_seq - _seq_logprob(t_logits, y))).sum()
    want = torch.autograd.grad(seq_kl, (theta1, theta2), retain_graph=True)
    for g, w in zip(expected_grad, want, strict=True):
        torch.testing.assert_close(g, w)
    # and the sequence KL differs from the per-token one, so the two tests check different things
    per_token = torch.autograd.grad(
        (logp_seq.exp().detach() * losses.token_reverse_kl(s_logits, t_logits, top_k=None).sum(-1)).sum(),
        (theta1, theta2),
    )
    assert not torch.allclose(per_token[0], want[0])  # step 1 sees the future only in the sequence KL
