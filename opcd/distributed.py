"""Several training processes (`accelerate launch`, `torchrun`): who does what, and the sums they share.

Data parallelism, explicit: each step's rollouts are cut into one contiguous shard per rank; every rank samples,
scores and backpropagates its shard with loss weights from the *global* token count, then the ranks sum their
gradients, so every rank holds the gradient of the whole step and takes the same optimizer step. One step on R ranks
therefore equals one step of a single process on the same global batch (given the same samples: generation is seeded
per chunk of `rollout.batch_size` prompts, by the chunk's global index). Only rank 0 logs and writes.

The process group comes from accelerate (`PartialState`: NCCL on GPUs, gloo on CPUs), so any launcher that sets
`WORLD_SIZE`/`RANK`/`LOCAL_RANK` works. Weights are replicated on every rank; sharded weights (FSDP, ZeRO-3) are not
supported by this loop.
"""

from __future__ import annotations

import os

import torch

from opcd.errors import OpcdError


class Ranks:
    """This process's place among the training processes (a single process is rank 0 of 1)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if self.world > 1:
            from accelerate import PartialState

            # initializes torch.distributed for this launcher: NCCL across GPUs, gloo across CPU processes
            state = PartialState(cpu=not torch.cuda.is_available())
            self.world, self.rank = state.num_processes, state.process_index

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (n must divide evenly)."""
        if n % self.world:
            raise OpcdError(
                f"{n} rollouts per step do not split evenly over {self.world} processes: make "
                "train.prompts_per_step x rollout.samples_per_prompt a multiple of the number of processes"
            )
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks, one flat buffer per dtype and device."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
