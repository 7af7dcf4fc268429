"""The training loop: LoRA or full finetuning, SFT or DPO, on one CPU or many GPUs.

One optimizer step consumes one global batch of `batch_size x grad_accum x processes` rows. The
rows of a step are fixed by the seed and the step number alone (see `data.plan_epoch` and
`data.micro_batches`), and the loss is the sum over the step's trained tokens divided by their
count over the whole global batch, so the gradient does not depend on how the rows are split
across processes and accumulation steps. Distribution goes through `accelerate` (DDP, FSDP,
DeepSpeed from `accelerate launch`, or plain `torchrun`); on CPU the backend is gloo.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..audio import AudioError
from ..model.kv_cache import AttentionBatch
from ..prompt import PromptError, RenderedPrompt
from . import checkpoint as ckpt
from .adapters import adapter_config, adapter_state, load_adapter_into, read_adapter, write_adapter
from .data import (
    DataError,
    PackedBatch,
    RowInfo,
    TrainData,
    bad_row_report,
    load_data,
    micro_batches,
    pack,
    plan_epoch,
    render,
)
from .dpo import DPOObjective, DPOOptions, make_reference
from .export import save_hub_checkpoint
from .logs import RunLog
from .lora import LoRAOptions, TrainableParts, add_lora, set_trainable, trainable_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    model: Path  # base checkpoint folder
    data: Path  # JSONL file
    output: Path  # adapter / model, checkpoints/ and logs/ go here
    full: bool = False  # full finetuning instead of LoRA
    dpo: bool = False  # preference pairs instead of SFT targets
    lora: LoRAOptions = field(default_factory=LoRAOptions)
    dpo_options: DPOOptions = field(default_factory=DPOOptions)
    train_projector: bool = False
    train_encoder: bool = False
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int | None = None  # default: warmup_ratio of the steps
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant (after the warmup)
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    batch_size: int = 1  # rows per micro-batch and process (pairs, for DPO)
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 turns clipping off
    max_length: int | None = None  # tokens per sequence; default: the model's positions
    bf16: bool = False  # bf16 autocast (weights and optimizer stay in their dtype)
    dtype: str = "auto"  # frozen base weights: bf16 for LoRA on CUDA, float32 otherwise
    gradient_checkpointing: bool = False
    seed: int = 42
    save_every: int = 0  # checkpoint every N steps (0: only the final output)
    keep_last: int = 3
    resume: bool = False
    skip_bad: bool = False
    num_workers: int = 0  # data loader processes that render the next steps' batches
    device: str = "auto"
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float]  # one per step, this run and the steps it resumed from
    bad_rows: int


# ---- the training forward ------------------------------------------------------------------


def token_logprobs(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Log-probability of every trained token of a packed batch: (n,) float32."""
    audio = None
    if batch.features:
        needs_grad = any(
            p.requires_grad
            for p in (*model.audio_tower.parameters(), *model.multi_modal_projector.parameters())
        )
        with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
            clips = model.encode_audio(batch.features, batch.num_frames)  # [(N_i, hidden)]
        audio = torch.cat([clips[i] for i in batch.clip_index])  # (A, hidden)
    hidden = model(batch.input_ids, batch.positions, AttentionBatch(batch.seq_lens), audio)
    logits = model.logits(hidden[batch.pred_rows])  # (n, vocab) float32, trained rows only
    return -F.cross_entropy(logits, batch.targets, reduction="none")


class TrainForward(nn.Module):
    """The model with `token_logprobs` as its forward, for DDP / FSDP to wrap."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch)


class SFTObjective:
    """Negative log-likelihood of the trained tokens, summed (the trainer divides it by the
    number of trained tokens in the global batch)."""

    @staticmethod
    def normalizer(rows: list[RowInfo]) -> float:
        return float(sum(r.num_targets for r in rows))

    def __call__(self, module: nn.Module, batch: PackedBatch):
        return -module(batch).sum(), {}


# ---- data for each step --------------------------------------------------------------------


class StepBatches(torch.utils.data.Dataset):
    """Item `step`: this process's micro-batches of that step, rendered and packed."""

    def __init__(self, data: TrainData, renderer, opts: TrainOptions, rank: int, world: int):
        self.data, self.renderer, self.opts = data, renderer, opts
        self.rank, self.world = rank, world
        self.global_batch = opts.batch_size * opts.grad_accum * world
        self.steps_per_epoch = len(plan_epoch(data.lengths, 0, opts.seed, self.global_batch))
        self._plans: dict[int, list[list[int]]] = {}

    def global_rows(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch not in self._plans:
            self._plans = {
                epoch: plan_epoch(self.data.lengths, epoch, self.opts.seed, self.global_batch)
            }
        return self._plans[epoch][index]

    def __len__(self) -> int:
        return 1 << 62  # indexed by step; the sampler decides the range

    def __getitem__(self, step: int) -> list[PackedBatch]:
        rows = self.global_rows(step)
        parts = micro_batches(rows, self.data.lengths, self.rank, self.world, self.opts.grad_accum)
        return [pack([p for i in part for p in self._render(i)]) for part in parts]

    def _render(self, i: int) -> list[RenderedPrompt]:
        row = self.data.rows[i]
        try:
            return [render(self.renderer, seq) for seq in row.sequences]
        except (AudioError, PromptError) as e:
            # Checked before training; only a file changed since then gets here. The row
            # becomes one token with nothing to learn, so every process still runs the step.
            log.warning("%s:%d: skipped during training: %s", self.data.path, row.line, e)
            eos = self.renderer.tokenizer.eos_token_id
            dummy = RenderedPrompt([eos], [], [], [False], 0)
            return [dummy] * len(row.sequences)


def _identity(x):
    return x


# ---- the loop ------------------------------------------------------------------------------


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}: use cosine, linear or constant")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(opts: TrainOptions):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = opts.device == "cpu" or (opts.device == "auto" and not torch.cuda.is_available())
    # Parts trained fully may get no gradient in a step without audio.
    ddp = DistributedDataParallelKwargs(
        find_unused_parameters=opts.train_projector or opts.train_encoder
    )
    return Accelerator(
        cpu=cpu,
        mixed_precision="bf16" if opts.bf16 else "no",
        gradient_accumulation_steps=opts.grad_accum,
        kwargs_handlers=[ddp],
    )


def finetune(opts: TrainOptions) -> TrainResult:
    from ..llm import load_checkpoint

    acc = make_accelerator(opts)
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    logging.basicConfig(level=logging.INFO if main else logging.WARNING)
    output = Path(opts.output)
    if opts.device == "cpu" or acc.device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(opts.seed)  # the same on every process: identical adapter init

    base_dtype = opts.dtype
    if base_dtype == "auto":
        base_dtype = "bfloat16" if acc.device.type == "cuda" and not opts.full else "float32"
    checkpoint = load_checkpoint(opts.model, dtype=base_dtype, device=str(acc.device))
    model, renderer = checkpoint.model, checkpoint.renderer
    max_length = opts.max_length or checkpoint.config.text.max_position_embeddings

    data = load_data(
        opts.data,
        renderer,
        max_length=max_length,
        dpo=opts.dpo,
        rank=rank,
        world_size=world,
        progress=opts.progress and main,
    )
    if data.bad:
        report = bad_row_report(data)
        if not opts.skip_bad:
            raise DataError(
                f"{len(data.bad)} of {data.total_rows} rows of {data.path} cannot be used "
                f"(pass --skip-bad to train on the rest):\n{report}"
            )
        if main:
            log.warning("skipping %d bad row(s):\n%s", len(data.bad), report)

    parts = TrainableParts(lm=opts.full, projector=opts.train_projector, encoder=opts.train_encoder)
    if not opts.full:
        if opts.lora.encoder and opts.train_encoder:
            raise ValueError("--lora-encoder and --train-encoder exclude each other")
        add_lora(model, opts.lora)
    set_trainable(model, parts)
    for p in model.parameters():  # trained weights in float32, whatever the base dtype
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    model.language_model.model.gradient_checkpointing = opts.gradient_checkpointing
    model.audio_tower.gradient_checkpointing = opts.gradient_checkpointing
    model.train()

    if opts.dpo:

        def reference_forward(m, batch):
            with acc.autocast():
                return token_logprobs(m, batch)

        objective = DPOObjective(opts.dpo_options, make_reference(model, reference_forward))
    else:
        objective = SFTObjective()

    named = trainable_parameters(model)
    decay = [p for n, p in named if p.ndim >= 2]
    no_decay = [p for n, p in named if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": opts.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=opts.lr,
    )
    steps = StepBatches(data, renderer, opts, rank, world)
    total = opts.max_steps or opts.epochs * steps.steps_per_epoch
    warmup = (
        opts.warmup_steps if opts.warmup_steps is not None else round(opts.warmup_ratio * total)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, opts.schedule, opts.min_lr_ratio)
    )
    module, optimizer = acc.prepare(TrainForward(model), optimizer)

    state = {"step": 0, "losses": [], "tokens": 0, "elapsed_s": 0.0}
    if opts.resume:
        state = _resume(output, model, optimizer, scheduler, opts, world, rank) or state
    start = state["step"]
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_options.json").write_text(json.dumps(_jsonable(opts), indent=2) + "\n")
        run_log = RunLog(output / "logs", resume_step=start, tensorboard=opts.tensorboard)
        n_train = sum(p.numel() for _, p in named)
        log.info(
            "%s%s: %d rows, %d steps (%d per epoch, global batch %d), %.2fM trained weights",
            "full" if opts.full else "LoRA",
            " DPO" if opts.dpo else "",
            len(data),
            total,
            steps.steps_per_epoch,
            steps.global_batch,
            n_train / 1e6,
        )

    loader = torch.utils.data.DataLoader(
        steps,
        batch_size=None,
        sampler=range(start, total),
        num_workers=opts.num_workers,
        collate_fn=_identity,
    )
    bar = None
    if main and opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc="training", unit="step")
    params = [p for _, p in named]
    t0 = time.perf_counter()
    for step, micro in zip(range(start, total), loader):
        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        infos = [data.info[i] for i in steps.global_rows(step)]
        scale = world * opts.grad_accum / objective.normalizer(infos)
        sums = {"loss": torch.zeros((), device=acc.device)}
        grad_norm = None
        for batch in micro:
            with acc.accumulate(module):
                loss_sum, metrics = objective(module, batch.to(acc.device))
                acc.backward(loss_sum * scale)
                sums["loss"] += loss_sum.detach()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v
                if acc.sync_gradients:
                    if opts.max_grad_norm > 0:
                        grad_norm = acc.clip_grad_norm_(params, opts.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        keys = sorted(sums)
        totals = torch.stack([torch.as_tensor(sums[k], device=acc.device).float() for k in keys])
        if world > 1:
            totals = acc.reduce(totals, reduction="sum")
        norm = objective.normalizer(infos)
        reduced = {k: float(v) / norm for k, v in zip(keys, totals)}
        dt, t0 = time.perf_counter() - t0, time.perf_counter()
        tokens = sum(i.num_tokens for i in infos)
        state["step"] = step + 1
        state["losses"].append(reduced["loss"])
        state["tokens"] += tokens
        state["elapsed_s"] += dt
        if main:
            metrics = {
                "step": step + 1,
                "epoch": (step + 1) / steps.steps_per_epoch,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens": state["tokens"],
                "tokens_per_s": tokens / dt,
                "samples_per_s": len(infos) / dt,
                "elapsed_s": state["elapsed_s"],
                **reduced,
            }
            if (step + 1) % opts.log_every == 0 or step + 1 == total:
                run_log.write(metrics)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{reduced['loss']:.4f}",
                    lr=f"{metrics['lr']:.2e}",
                    tok_s=f"{tokens / dt:.0f}",
                )
                bar.update(1)
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < total:
            _save(acc, output, model, optimizer, scheduler, opts, parts, state, world)
    if bar is not None:
        bar.close()

    acc.wait_for_everyone()
    if main:
        _write_weights(output, model, opts, parts)
        run_log.close()
        log.info("wrote %s", output)
    acc.wait_for_everyone()
    return TrainResult(output, state["step"], state["losses"], len(data.bad))


# ---- outputs and checkpoints ---------------------------------------------------------------


def _write_weights(
    folder: Path, model: nn.Module, opts: TrainOptions, parts: TrainableParts
) -> None:
    """A PEFT adapter (LoRA) or a full hub-layout checkpoint (full finetuning) in `folder`."""
    if opts.full:
        save_hub_checkpoint(model, opts.model, folder)
    else:
        config = adapter_config(model, opts.lora, parts, str(opts.model))
        write_adapter(folder, adapter_state(model, parts), config)


def _save(acc, output, model, optimizer, scheduler, opts, parts, state, world) -> None:
    root = ckpt.checkpoints_root(output)
    step = state["step"]
    if acc.is_main_process:
        ckpt.start_checkpoint(root, step)
    acc.wait_for_everyone()
    tmp = ckpt.temp_dir(root, step)
    ckpt.save_rng(tmp, acc.process_index)
    if acc.is_main_process:
        _write_weights(tmp, model, opts, parts)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        global_batch = opts.batch_size * opts.grad_accum * world
        ckpt.write_state(tmp, {**state, "global_batch": global_batch, "world_size": world})
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.commit_checkpoint(root, step, opts.keep_last)
    acc.wait_for_everyone()


def _resume(output, model, optimizer, scheduler, opts, world, rank) -> dict | None:
    folder = ckpt.latest_checkpoint(output)
    if folder is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", output)
        return None
    state = ckpt.read_state(folder)
    global_batch = opts.batch_size * opts.grad_accum * world
    if state["global_batch"] != global_batch:
        raise ValueError(
            f"{folder} was trained with a global batch of {state['global_batch']} rows; this run "
            f"has {global_batch}: the data position would not match (keep batch size x grad "
            "accum x processes the same)"
        )
    if opts.full:
        from safetensors.torch import load_file

        from ..model.loader import weight_files

        with torch.no_grad():
            for f in weight_files(folder):
                for name, value in load_file(str(f)).items():
                    model.get_parameter(name).copy_(value)
    else:
        load_adapter_into(model, read_adapter(folder))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    if not ckpt.load_rng(folder, rank):
        log.warning("%s has no random state for process %d: reseeding", folder, rank)
        seed_everything(opts.seed + state["step"] + 1000 * rank)
    log.info("resumed from %s (step %d)", folder, state["step"])
    return state


def _jsonable(opts: TrainOptions) -> dict:
    out = asdict(opts)
    for k, v in out.items():
        if isinstance(v, Path):
            out[k] = str(v)
    return out
