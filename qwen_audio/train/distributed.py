"""accelerate: one Accelerator per run, and what the launch configuration really gave us."""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def make_accelerator(*, device: str, bf16: bool, grad_accum: int, unused_parameters: bool):
    """`unused_parameters`: some trained weights may get no gradient in a step (DDP must know)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    if not torch.distributed.is_initialized():
        # accelerate keeps its settings in process-wide singletons; a second run in the same
        # process (a notebook, the tests) may want other ones. Nothing to lose in one process.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)],
    )


def setup_sharding(acc) -> bool:
    """True under FSDP or DeepSpeed. accelerate runs DDP instead when there is no GPU, whatever
    the launch config says: say so rather than let the user believe the model is sharded."""
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    if kind == DistributedType.DEEPSPEED:
        # DeepSpeed wants a per-GPU batch size; packed batches have none, and it only logs it.
        acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
    wanted = [e for e in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{e}") == "true"]
    if wanted and kind not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        log.warning("%s needs GPUs: running %s instead", wanted[0], kind.value)
    return kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
