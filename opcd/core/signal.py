"""How much of a step's gradient is signal: its micro-batches' gradients against their sum.

A step's gradient G is the sum of its K micro-batches' parts d_k. Were the parts independent draws around one
mean, the noise in G would have the expected squared norm (K·Σ|d_k|² − |G|²) / (K − 1), and |G|² minus that noise
estimates the squared norm of the mean itself. `signal_share` is that estimate over |G|², clamped to [0, 1]: near 1
when the micro-batches agree (a behaviour the context teaches), near 0 when they point in unrelated directions (a
context that changes nothing, where every gradient is sampling noise). This is the estimate behind the gradient
noise scale of McCandlish et al. (2018), read from the micro-batches a step computes anyway.

`train.lr_by_signal` multiplies each step's rate by it. Adam moves every weight by about the full rate whatever the
size of its gradient, so a step of pure noise moves the student as far as one that carries a behaviour: the null
test in docs/results.md. The parts are taken to be the same size (micro-batches of equal rollout counts).
"""

from __future__ import annotations

import torch


class GradientParts:
    """The summed squared norm of each micro-batch's share of the accumulated gradient, and how many there were.

    `before()` keeps a copy of the gradient accumulated so far and `after()` adds |now − copy|², so this costs one
    copy of the trained weights' gradients: a few MB for a LoRA adapter, the model's size in full fine-tuning."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]
        self.squares = 0.0
        self.count = 0
        self._kept: list[torch.Tensor | None] = []

    def before(self) -> None:
        self._kept = [None if p.grad is None else p.grad.detach().clone() for p in self.params]

    def after(self) -> None:
        sums = []  # one float64 sum a weight, read back once: not one device sync per weight
        for p, kept in zip(self.params, self._kept, strict=True):
            if p.grad is not None:
                part = p.grad.detach() if kept is None else p.grad.detach() - kept
                sums.append(part.float().pow(2).sum().double())
        if sums:
            self.squares += float(torch.stack([s.to(sums[0].device) for s in sums]).sum())
        self.count += 1
        self._kept = []


def signal_share(squares: float, parts: int, total_squared: float) -> float:
    """The share of the step's squared gradient norm `total_squared` that is not noise, from its `parts` micro-batch
    parts' summed squared norms `squares`; 1.0 when it cannot be told (fewer than 2 parts, or no gradient)."""
    if parts < 2 or not total_squared > 0:
        return 1.0
    noise = (parts * squares - total_squared) / (parts - 1)
    return min(1.0, max(0.0, 1.0 - noise / total_squared))
