"""The training loop: LoRA or full finetuning, SFT or DPO, on one CPU or many GPUs.

The loss of a step is the sum over its trained tokens (DPO: pairs) divided by their number in
the whole global batch, so the gradient does not depend on how the rows are split over
processes and accumulation steps (see `batching.py`). Distribution goes through `accelerate`
(DDP, FSDP or DeepSpeed from `accelerate launch`, or plain `torchrun`); on CPU the backend is
gloo.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .adapters import adapter_config, adapter_state, load_adapter_into, read_adapter, write_adapter
from .allocator import keep_freed_memory
from .batching import PackedBatch, StepBatches
from .data import DataError, bad_row_report, load_data
from .distributed import make_accelerator, setup_sharding
from .dpo import DPOObjective, DPOOptions, make_reference
from .export import save_hub_checkpoint
from .forward import EncoderCache, SFTObjective, TrainForward, token_logprobs
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
    train_encoder_layers: int = 0  # the top N encoder layers (and its final norm) only
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
    dtype: str = "auto"  # frozen base weights: bf16 for LoRA on CUDA (autocast on), else float32
    gradient_checkpointing: bool = False
    cache_encoder: bool = False  # keep the frozen encoder layers' output per clip: run them once
    seed: int = 42
    save_every: int = 0  # checkpoint every N steps (0: only the final output)
    keep_last: int = 3
    resume: bool = False
    skip_bad: bool = False
    num_workers: int = 0  # data loader processes that render the next steps' batches
    cache_mb: int = 1024  # keep rendered rows (audio features) in memory up to this size
    device: str = "auto"
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainResult:
    output: Path
    steps: int
    losses: list[float]  # one per step, including the steps a resumed run started from
    bad_rows: int
    main: bool = True  # the main process (the one that wrote the outputs)


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


def finetune(opts: TrainOptions) -> TrainResult:
    return Trainer(opts).run()


class Trainer:
    """Holds a run's pieces: setup in `__init__`, the loop in `run`, checkpoints around it."""

    def __init__(self, opts: TrainOptions) -> None:
        from ..loading import load_checkpoint

        cuda = opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
        dtype = opts.dtype
        if dtype == "auto":
            dtype = "bfloat16" if cuda and not opts.full else "float32"
        if dtype != "float32" and not opts.bf16:
            # bf16 base weights next to float32 trained ones need autocast to multiply together
            opts = replace(opts, bf16=True)
        self.opts = opts
        encoder_adapters = opts.lora.encoder and not opts.full  # --full puts no adapters on
        if not cuda and (opts.train_encoder or opts.train_encoder_layers or encoder_adapters):
            keep_freed_memory()  # the encoder's activations churn pages (see allocator.py)
        self.acc = acc = make_accelerator(
            device=opts.device,
            bf16=opts.bf16,
            grad_accum=opts.grad_accum,
            # parts trained fully get no gradient in a step without audio
            unused_parameters=(
                opts.train_projector or opts.train_encoder or opts.train_encoder_layers > 0
            ),
        )
        self.main, self.rank, self.world = acc.is_main_process, acc.process_index, acc.num_processes
        logging.basicConfig(level=logging.INFO if self.main else logging.WARNING)
        self.output = Path(opts.output)
        seed_everything(opts.seed)  # the same on every process: identical adapter init

        base = load_checkpoint(opts.model, dtype=dtype, device=str(acc.device), for_training=True)
        self.model, self.renderer, self.base_path = base.model, base.renderer, base.path
        self.data = load_data(
            opts.data,
            self.renderer,
            max_length=opts.max_length or base.config.text.max_position_embeddings,
            dpo=opts.dpo,
            rank=self.rank,
            world_size=self.world,
            progress=opts.progress and self.main,
            keep_rendered_bytes=opts.cache_mb * 2**20,  # the check's rendering starts the cache
        )
        self._check_bad_rows()
        self.parts = TrainableParts(
            lm=opts.full,
            projector=opts.train_projector,
            encoder=opts.train_encoder,
            encoder_top_layers=opts.train_encoder_layers,
        )
        self._prepare_model()
        self.objective = self._make_objective()  # DPO's frozen reference: the weights as loaded

        self.named_params = trainable_parameters(self.model)
        self.steps = StepBatches(
            self.data,
            self.renderer,
            batch_size=opts.batch_size,
            grad_accum=opts.grad_accum,
            seed=opts.seed,
            rank=self.rank,
            world_size=self.world,
            cache_bytes=opts.cache_mb * 2**20,
        )
        self.total = opts.max_steps or opts.epochs * self.steps.steps_per_epoch
        warmup = opts.warmup_steps
        if warmup is None:
            warmup = round(opts.warmup_ratio * self.total)
        optimizer = torch.optim.AdamW(
            [
                {"params": [p for _, p in self.named_params if p.ndim >= 2]},
                {"params": [p for _, p in self.named_params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=opts.lr,
            weight_decay=opts.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, self.total, warmup, opts.schedule, opts.min_lr_ratio),
        )
        self.sharded = setup_sharding(acc)
        cache = EncoderCache(opts.train_encoder_layers) if opts.cache_encoder else None
        self.module, self.optimizer = acc.prepare(TrainForward(self.model, cache), optimizer)
        self.state = {"step": 0, "losses": [], "tokens": 0, "elapsed_s": 0.0}
        if opts.resume:
            self._resume()

    # ---- setup ---------------------------------------------------------------------------

    def _check_bad_rows(self) -> None:
        data = self.data
        if not data.bad:
            return
        full_list = self.output / "bad_rows.txt"
        if self.main:  # every bad row; the message shows the first ones
            self.output.mkdir(parents=True, exist_ok=True)
            full_list.write_text(bad_row_report(data, limit=None) + "\n")
        report = f"{bad_row_report(data)}\n(the full list is in {full_list})"
        if not self.opts.skip_bad:
            raise DataError(
                f"{len(data.bad)} of {data.total_rows} rows of {data.path} cannot be used "
                f"(pass --skip-bad to train on the rest):\n{report}"
            )
        if self.main:
            log.warning("skipping %d bad row(s):\n%s", len(data.bad), report)

    def _prepare_model(self) -> None:
        opts, model = self.opts, self.model
        if opts.cache_encoder and (opts.train_encoder or (opts.lora.encoder and not opts.full)):
            raise ValueError(
                "--cache-encoder needs a frozen audio encoder (or its top layers trained only: "
                "--train-encoder-layers)"
            )
        if opts.train_encoder and opts.train_encoder_layers:
            raise ValueError("--train-encoder and --train-encoder-layers exclude each other")
        if not opts.full:
            if opts.lora.encoder and (opts.train_encoder or opts.train_encoder_layers):
                raise ValueError(
                    "--lora-encoder excludes --train-encoder and --train-encoder-layers"
                )
            add_lora(model, opts.lora)
        set_trainable(model, self.parts)
        for p in model.parameters():  # trained weights in float32, whatever the base dtype
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        model.language_model.model.gradient_checkpointing = opts.gradient_checkpointing
        model.audio_tower.gradient_checkpointing = opts.gradient_checkpointing
        model.train()

    def _make_objective(self):
        if not self.opts.dpo:
            return SFTObjective()

        def reference_forward(m: nn.Module, batch: PackedBatch) -> torch.Tensor:
            with self.acc.autocast():
                return token_logprobs(m, batch)

        return DPOObjective(self.opts.dpo_options, make_reference(self.model, reference_forward))

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        opts, acc, steps = self.opts, self.acc, self.steps
        start = self.state["step"]
        run_log = bar = None
        if self.main:
            self.output.mkdir(parents=True, exist_ok=True)
            options = json.dumps(_jsonable(opts), indent=2)
            (self.output / "train_options.json").write_text(options + "\n")
            run_log = RunLog(self.output / "logs", resume_step=start, tensorboard=opts.tensorboard)
            log.info(
                "%s%s: %d rows, %d steps (%d per epoch, global batch %d), %.2fM trained weights",
                "full" if opts.full else "LoRA",
                " DPO" if opts.dpo else "",
                len(self.data),
                self.total,
                steps.steps_per_epoch,
                steps.global_batch,
                sum(p.numel() for _, p in self.named_params) / 1e6,
            )
            if opts.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.total, initial=start, desc="training", unit="step")
        loader = torch.utils.data.DataLoader(
            steps,
            batch_size=None,
            sampler=range(start, self.total),
            num_workers=opts.num_workers,
            collate_fn=_identity,
            # its own generator: starting an iterator must not draw from the global one, whose
            # state a resumed run has just restored
            generator=torch.Generator().manual_seed(opts.seed),
        )
        t0 = time.perf_counter()
        for step, micro in zip(range(start, self.total), loader):
            metrics = self.train_step(step, micro)
            dt = time.perf_counter() - t0
            self.state["step"] = step + 1
            self.state["losses"].append(metrics["loss"])
            self.state["tokens"] += metrics["step_tokens"]
            self.state["elapsed_s"] += dt
            if self.main:
                metrics |= {
                    "step": step + 1,
                    "epoch": (step + 1) / steps.steps_per_epoch,
                    "tokens": self.state["tokens"],
                    "tokens_per_s": metrics["step_tokens"] / dt,
                    "samples_per_s": steps.global_batch / dt,
                    "elapsed_s": self.state["elapsed_s"],
                }
                if (step + 1) % opts.log_every == 0 or step + 1 == self.total:
                    run_log.write(metrics)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.4f}",
                        lr=f"{metrics['lr']:.2e}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}",
                    )
                    bar.update(1)
            if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < self.total:
                self.save_checkpoint()
            t0 = time.perf_counter()
        if bar is not None:
            bar.close()
        acc.wait_for_everyone()
        self.write_weights(self.output)
        if self.main:
            run_log.close()
            log.info("wrote %s", self.output)
        acc.wait_for_everyone()
        s = self.state
        return TrainResult(self.output, s["step"], s["losses"], len(self.data.bad), self.main)

    def train_step(self, step: int, micro: list[PackedBatch]) -> dict[str, float]:
        """One optimizer step over this process's micro-batches; metrics over all processes."""
        acc, opts, objective = self.acc, self.opts, self.objective
        lr = self.scheduler.get_last_lr()[0]  # the rate this step's update uses
        rows = [self.data.info[i] for i in self.steps.global_rows(step)]
        norm = objective.normalizer(rows)
        # accelerate divides by grad_accum and DDP averages over processes: undo both.
        scale = self.world * opts.grad_accum / norm
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=acc.device)}
        grad_norm = None
        for batch in micro:
            with acc.accumulate(self.module):
                loss_sum, extra = objective(self.module, batch.to(acc.device))
                acc.backward(loss_sum * scale)
                sums["loss"] += loss_sum.detach().float()
                for k, v in extra.items():
                    sums[k] = sums.get(k, 0) + v.float()
                if acc.sync_gradients:
                    if opts.max_grad_norm > 0:
                        params = [p for _, p in self.named_params]
                        grad_norm = acc.clip_grad_norm_(params, opts.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        if not acc.sync_gradients:
            raise RuntimeError("gradient accumulation went out of step with the optimizer steps")
        keys = sorted(sums)
        totals = torch.stack([sums[k].reshape(()) for k in keys])
        if self.world > 1:
            totals = acc.reduce(totals, reduction="sum")
        metrics = {k: float(v) / norm for k, v in zip(keys, totals.tolist())}
        metrics["lr"] = lr
        metrics["grad_norm"] = None if grad_norm is None else float(grad_norm)
        metrics["step_tokens"] = sum(r.num_tokens for r in rows)
        return metrics

    # ---- outputs and checkpoints ---------------------------------------------------------

    def write_weights(self, folder: Path) -> None:
        """A PEFT adapter (LoRA) or a full hub-layout checkpoint (full finetuning). Every process
        calls it, as FSDP and DeepSpeed gather the weights first; the main one writes."""
        gathered = None
        if self.sharded:
            full = self.acc.get_state_dict(self.module)  # TrainForward's names: "model.<ours>"
            gathered = {k.removeprefix("model."): v for k, v in full.items()}
        if not self.main:
            return
        if self.opts.full:
            save_hub_checkpoint(self.model, self.base_path, folder, state=gathered)
            return
        tensors = adapter_state(self.model, self.parts)
        if gathered is not None:
            tensors = {k: gathered[k] for k in tensors}
        base = str(self.base_path.resolve())
        write_adapter(folder, tensors, adapter_config(self.model, self.opts.lora, self.parts, base))

    def save_checkpoint(self) -> None:
        acc, step = self.acc, self.state["step"]
        root = ckpt.checkpoints_root(self.output)
        if self.main:
            ckpt.start_checkpoint(root, step)
        acc.wait_for_everyone()
        tmp = ckpt.temp_dir(root, step)
        ckpt.save_rng(tmp, self.rank)
        self.write_weights(tmp)
        if self.sharded:  # sharded weights and optimizer state, each process its part
            acc.save_state(str(tmp / "accelerate"))
        if self.main:
            if not self.sharded:
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            extra = {"global_batch": self.steps.global_batch, "world_size": self.world}
            ckpt.write_state(tmp, {**self.state, **extra})  # last: marks the folder complete
        acc.wait_for_everyone()
        if self.main:
            ckpt.commit_checkpoint(root, step, self.opts.keep_last)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        folder = ckpt.latest_checkpoint(self.output)
        if folder is None:
            log.warning("--resume: no checkpoint in %s, starting from step 0", self.output)
            return
        state = ckpt.read_state(folder)
        if state["global_batch"] != self.steps.global_batch:
            raise ValueError(
                f"{folder} was trained with a global batch of {state['global_batch']} rows and "
                f"this run has {self.steps.global_batch}, so the data position would not match: "
                "keep batch size x grad accum x processes the same"
            )
        if self.sharded:
            self.acc.load_state(str(folder / "accelerate"))
        elif self.opts.full:
            from safetensors.torch import load_file

            from ..model.loader import weight_files

            with torch.no_grad():
                for f in weight_files(folder):
                    for name, value in load_file(str(f)).items():
                        self.model.get_parameter(name).copy_(value)
        else:
            load_adapter_into(self.model, read_adapter(folder))
        if not self.sharded:
            optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True)
            self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        if not ckpt.load_rng(folder, self.rank):
            log.warning("%s has no random state for process %d: reseeding", folder, self.rank)
            seed_everything(self.opts.seed + state["step"] + 1000 * self.rank)
        self.state = {k: state[k] for k in self.state}
        log.info("resumed from %s at step %d", folder, state["step"])


def _identity(x):
    return x


def _jsonable(opts: TrainOptions) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
