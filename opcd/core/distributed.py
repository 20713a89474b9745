"""Several training processes (`accelerate launch`, `torchrun`): who does what, and the sums they share.

Data parallelism, explicit: each step's rollouts are cut into one contiguous shard per rank; every rank samples,
scores and backpropagates its shard with loss weights from the *global* token count, then the ranks sum their
gradients, so every rank holds the gradient of the whole step and takes the same optimizer step. One step on R ranks
therefore equals one step of a single process on the same global batch (given the same samples: generation is seeded
per chunk of `rollout.batch_size` prompts, by the chunk's global index). Only rank 0 logs and writes.

The process group comes from accelerate (`PartialState`: NCCL on GPUs, gloo on CPUs), so any launcher that sets
`WORLD_SIZE`/`RANK`/`LOCAL_RANK` works.

Weights are replicated on every rank (DDP-style), unless accelerate's configuration asks for FSDP
(`distributed_type: FSDP`, which `accelerate launch` passes on as `ACCELERATE_USE_FSDP=true`). Then the student's
weights, gradients and optimizer state are sharded with PyTorch's FSDP2 (`fully_shard`, the ZeRO-3 layout): one unit
per transformer layer (`fsdp_transformer_layer_cls_to_wrap`, else the model's `_no_split_modules`) plus the root,
with accelerate's `fsdp_reshard_after_forward` and `fsdp_offload_params`. FSDP averages gradients over ranks, so the
loss is scaled by the number of ranks to keep the global token-mean. The frozen teacher stays replicated (inference
only, in the compute dtype). DeepSpeed is not used: its configuration is refused with a pointer to FSDP.
"""

from __future__ import annotations

import os

import torch

from opcd.errors import OpcdError


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


class Ranks:
    """This process's place among the training processes (a single process is rank 0 of 1)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if _env_flag("ACCELERATE_USE_DEEPSPEED"):
            raise OpcdError(
                "DeepSpeed is not supported by opcd's training loop: for ZeRO-3-style sharding use accelerate's FSDP "
                "configuration (distributed_type: FSDP, fsdp_version: 2); for replicated weights, multi-GPU (DDP)"
            )
        self.fsdp = self.world > 1 and _env_flag("ACCELERATE_USE_FSDP")
        if self.fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
            raise OpcdError("opcd shards with FSDP2: set fsdp_version: 2 in the accelerate config (--fsdp_version 2)")
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
        """Sum every parameter's gradient over ranks, one flat buffer per dtype and device (FSDP did it already)."""
        if self.world == 1 or self.fsdp:
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

    @property
    def loss_scale(self) -> float:
        """FSDP averages gradients over ranks; scaling the loss by the rank count turns that back into the sum."""
        return float(self.world) if self.fsdp else 1.0

    def shard_model(self, model):
        """FSDP2: shard every transformer layer, then the root (embeddings, final norm, head), in place."""
        from accelerate.utils import FullyShardedDataParallelPlugin
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings accelerate launch exported
        names = set(plugin.transformer_cls_names_to_wrap or getattr(model, "_no_split_modules", None) or [])
        units = [m for m in model.modules() if type(m).__name__ in names]
        if not units:
            raise OpcdError(
                f"FSDP: no module of class {sorted(names) or '(none given)'} in {type(model).__name__}: set "
                "fsdp_transformer_layer_cls_to_wrap to the model's decoder layer class"
            )
        kwargs = {
            "mesh": init_device_mesh(self._device().type, (self.world,)),
            "reshard_after_forward": plugin.reshard_after_forward is not False,
        }
        if _env_flag("FSDP_OFFLOAD_PARAMS"):
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for unit in units:
            fully_shard(unit, **kwargs)
        return fully_shard(model, **kwargs)

    def full_state_dict(self, model) -> dict:
        """The whole model's weights on rank 0's CPU (collective: every rank calls it; others get {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The optimizer state gathered on rank 0's CPU, keyed by parameter name (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_full_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Every rank reads the saved full state and keeps its own shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=options)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def _device(self) -> torch.device:
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
