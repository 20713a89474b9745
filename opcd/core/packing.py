"""bf16 weights packed once for CPU decoding: the same oneDNN matmul, without reordering every weight on every call.

On a CPU, torch's bf16 `linear` hands each call's weight to oneDNN, which first reorders it into its blocked layout:
the whole weight read and written again for every call. In decoding, where a call multiplies a few rows, that
reorder is most of the call (`benchmarks/packed_linear.py`). `packed_linears(model)` reorders each `nn.Linear`'s
weight once for a `with` block (a sampling or evaluation call) and calls oneDNN's linear with the packed weight.

Deliberately exact, or nothing: the packed call must give the same bits as `F.linear`, so that no sampled or greedy
token, and so no recorded number, changes. Each weight shape is checked once per process on probe rows against
`F.linear`; a shape that differs, a torch without the op, a weight on another device, or a call that needs
gradients runs `F.linear` as before. `OPCD_PACKED_LINEAR=0` turns it off. The packed copies (the bf16 size of the
weights, once) live only inside the block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_VERDICTS: dict[tuple, bool] = {}  # (in, out, bias, rows hint): whether the packed call matched F.linear bit for bit


def _ops():
    """oneDNN's reorder and linear ops, or None where this torch lacks them."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return mkldnn._reorder_linear_weight, mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _matches(weight: Tensor, packed: Tensor, bias: Tensor | None, linear) -> bool:
    """Whether the packed call gives F.linear's bits on probe inputs of 1, 3, 2 x 5 and 2 x 37 rows (a decoding step, a
    prompt)."""
    generator = torch.Generator().manual_seed(0)
    for shape in ((1, weight.shape[1]), (3, weight.shape[1]), (2, 5, weight.shape[1]), (2, 37, weight.shape[1])):
        x = torch.randn(*shape, generator=generator).to(torch.bfloat16)
        if not torch.equal(linear(x, packed, bias, "none", [], ""), F.linear(x, weight, bias)):
            return False
    return True


def _packed_forward(module: nn.Linear, rows: int, ops) -> Callable[[Tensor], Tensor] | None:
    """A forward for `module` that uses its weight packed once (None: keep the module's own forward)."""
    reorder, linear = ops
    weight = module.weight.detach().to(torch.bfloat16)
    bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
    try:
        packed = reorder(weight, rows)
        key = (*weight.shape, bias is not None, rows)
        if key not in _VERDICTS:
            _VERDICTS[key] = _matches(weight, packed, bias, linear)
    except RuntimeError:  # oneDNN without bf16 support on this CPU
        return None
    if not _VERDICTS[key]:
        return None
    own_weight, own_bias = module.weight, module.bias

    def forward(x: Tensor) -> Tensor:
        bf16 = x.dtype == torch.bfloat16 and own_weight.dtype == torch.bfloat16
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if torch.is_grad_enabled() or not (bf16 or autocast):
            return F.linear(x, own_weight, own_bias)  # training, or a dtype the packed weight does not stand for
        return linear(x.to(torch.bfloat16), packed, bias, "none", [], "")

    return forward


@contextmanager
def packed_linears(model: nn.Module, rows: int = 1) -> Iterator[int]:
    """Within the block, the model's CPU `nn.Linear` layers multiply bf16 inputs (or fp32 ones under bf16 autocast)
    with weights packed once; `rows` is how many rows a call usually has (oneDNN's hint). Yields how many layers it
    packed. The weights must not change inside the block."""
    ops = _ops() if os.environ.get("OPCD_PACKED_LINEAR", "1") != "0" else None
    patched = []
    try:
        for module in model.modules() if ops else ():
            # exactly nn.Linear on the CPU, whose forward no one else (accelerate's hooks) has replaced
            if type(module) is nn.Linear and module.weight.device.type == "cpu" and "forward" not in vars(module):
                forward = _packed_forward(module, rows, ops)
                if forward is not None:
                    module.forward = forward
                    patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
