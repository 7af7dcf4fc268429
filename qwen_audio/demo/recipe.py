"""The demo model from nothing, reproducibly: ``qwen-audio train-demo`` (``make demo-model``).

Steps, all seeded, under one work folder:
    data     the generator of ``data.py``               -> WORK/data (skipped when WORK/data holds
             a finished set made with the same seed and scale)
    init     tokenizer, config, tiny.en encoder, random projector and decoder  -> WORK/init
    train    ``qwen-audio finetune --full --train-projector --cache-encoder --bf16`` (the encoder
             stays frozen; the projector and decoder learn)  -> WORK/run (float32)
    encoder  the same from WORK/run with ``--train-encoder-layers 4`` at a lower rate: the
             encoder's layers adapt to espeak-ng voices too (only the convolutions stay frozen;
             nothing is cached, as each clip is seen once)  -> WORK/run-encoder
    refine   the same for 600 more steps at 1e-4  -> WORK/run-refine; the three stages' loss
             curves in WORK/loss.png
    export   the trained weights in float16                                   -> WORK/demo-model
    eval     ``qwen-audio eval run --task generic`` on the held-out sets      -> WORK/eval/*
    samples  two held-out clips the model answers correctly                   -> WORK/samples
WORK/report.json records each step's time, the exact commands, the sizes and the scores.
``install`` copies the model and the samples into the package (``qwen_audio/assets``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf
import torch

from qwen_audio.demo import data as demo_data
from qwen_audio.demo.build import DecoderShape, build_initial_checkpoint, parameter_counts

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The eval sets and how each is scored (all made by data.py, plus voice chat from valid.jsonl).
EVAL_SETS = {
    "demo_asr_heldout": ("eval/demo_asr_heldout.jsonl", "wer"),
    "demo_voice": ("eval/demo_voice.jsonl", "acc"),
    "demo_sound": ("eval/demo_sound.jsonl", "acc"),
    "demo_chat_heldout": ("eval/demo_chat_heldout.jsonl", "acc"),
}
SAMPLE_SOUND = "siren"


@dataclass(frozen=True)
class RecipeOptions:
    work: Path  # every output goes under this folder
    seed: int = 0
    scale: float = 1.0  # data size (data.py's counts are for scale 1)
    workers: int = demo_data.MAX_WORKERS
    shape: DecoderShape = field(default_factory=DecoderShape)
    # 12,000 sentences: 3 epochs 43.1% held-out WER, 5 epochs 36.3%. A transcription-only probe
    # (batch 16, held-out loss after 900 steps): 8,000 sentences 0.75, 4,000 0.86, 2,000 1.12
    # (overfitted): so more sentences with fewer passes. With the follow-up turns and the
    # conversation-weighted tokenizer: 22,000 sentences x 3 epochs 32.5% (47 min), 19,000 x 4
    # epochs 27.8% (50 min). With the padded training attention (1.35x faster steps) 19,000 x 5
    # epochs 24.8% in 48 min (24,000 x 4: 24.6%, voice 97.5%, 52 min: no gain); an auxiliary CTC
    # loss on the decoder's audio positions was worse (1,000 steps: 77.0% against 73.3%; branch
    # exp/ctc-aux-loss). 4 epochs here, 1 with the encoder trained and 600 steps more (below):
    # 7.7%, 73 min; with 2 (each is ~8 min) the recipe takes 55 min and reaches 9.2%.
    epochs: int = 2
    batch_size: int = 16  # rows per optimizer step
    # 1e-3: in 1,200-step trials 2e-3 gave 70% held-out WER against 51% at 1e-3, and 3e-3 hardly
    # learned to use the audio at all.
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    # The second stage trains the encoder's layers with the rest. Continuing the 19,000 x 5
    # model (24.8%) for 400 steps at a constant 2e-4 gave held-out WER 29.3% with the encoder
    # frozen, 30.9% with its top layer trained, 25.4% with the top 2, 23.6% with all 4 layers,
    # 22.3% with the convolutions too: the frozen tiny.en features, not the decoder, limited the
    # transcription of new sentences. A stage-2 step costs ~0.8 s against ~0.38 s in stage 1.
    encoder_epochs: int = 1  # 0: no second stage
    encoder_layers: int = 4  # tiny.en has 4
    encoder_lr: float = 3e-4
    # A third stage, the second's setup for a few more steps at a lower rate: 600 steps at 1e-4
    # took held-out WER from 10.5% to 7.7% (float32 weights: 10.7% -> 7.7%), after 4 epochs of stage 1.
    refine_steps: int = 600  # 0: no third stage
    refine_lr: float = 1e-4
    cache_mb: int = 8192  # rendered rows kept in memory by the trainer (~4 GB at scale 1)
    evaluate: bool = True
    eval_batch_size: int = 32


def finetune_argv(opts: RecipeOptions, init: Path, run: Path) -> list[str]:
    """The arguments of ``qwen-audio finetune`` for the demo model."""
    return [
        "--model", str(init), "--data", str(opts.work / "data" / "train.jsonl"),
        "--output", str(run), "--full", "--train-projector", "--cache-encoder", "--bf16",
        "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size), "--lr", str(opts.lr),
        "--weight-decay", str(opts.weight_decay), "--warmup-ratio", str(opts.warmup_ratio),
        "--seed", str(opts.seed), "--cache-mb", str(opts.cache_mb), "--log-every", "10",
        "--no-tensorboard",
    ]  # fmt: skip


def encoder_stage_argv(opts: RecipeOptions, start: Path, run: Path) -> list[str]:
    """The second stage: from the first stage's model, the encoder's top layers train too."""
    argv = finetune_argv(opts, start, run)
    for flag, value in (("--epochs", opts.encoder_epochs), ("--lr", opts.encoder_lr)):
        argv[argv.index(flag) + 1] = str(value)
    if opts.encoder_epochs <= 1:
        # One pass over the clips (the third stage's 600 steps are less than one too) never
        # reads the cache of the frozen convolutions' output; it only grew (6 GB at scale 1).
        argv.remove("--cache-encoder")
    return argv + ["--train-encoder-layers", str(opts.encoder_layers)]


def refine_stage_argv(opts: RecipeOptions, start: Path, run: Path) -> list[str]:
    """The third stage: the second's setup for `refine_steps` more steps at `refine_lr`, its rows
    in another order (seed + 2)."""
    argv = encoder_stage_argv(opts, start, run)
    for flag, value in (("--lr", opts.refine_lr), ("--seed", opts.seed + 2)):
        argv[argv.index(flag) + 1] = str(value)
    return argv + ["--max-steps", str(opts.refine_steps), "--warmup-steps", "20"]


def eval_argv(model: Path, data: Path, output: Path, metric: str, batch_size: int) -> list[str]:
    """``qwen-audio eval run`` on a generic eval file, in the chat format the model learned."""
    argv = ["--task", "generic", "--data", str(data), "--model", str(model)]
    argv += ["--output", str(output), "--metric", metric, "--batch-size", str(batch_size)]
    argv += ["--prompt-variant", "instruct", "--prompt", "{prompt}"]
    return argv + (["--language", "en"] if metric == "wer" else [])


def run_recipe(opts: RecipeOptions) -> dict:
    """Run every step; returns (and writes to WORK/report.json) what happened."""
    work = opts.work.resolve()
    opts = RecipeOptions(**{**asdict(opts), "work": work, "shape": opts.shape})
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"options": _jsonable(asdict(opts)), "seconds": {}, "commands": {}}
    t_all = time.perf_counter()

    def timed(step: str):
        return _Timer(report["seconds"], step)

    data_dir = work / "data"
    with timed("data"):
        report["data"] = _make_data(data_dir, opts)
        write_chat_eval(data_dir)
    report["commands"]["data"] = (
        f"python scripts/demo/make_data.py {data_dir} --seed {opts.seed} --scale {opts.scale} "
        f"--workers {opts.workers}"
    )

    init = work / "init"
    with timed("init"):
        shutil.rmtree(init, ignore_errors=True)
        lines = (data_dir / "text" / "train_text.txt").read_text(encoding="utf-8").splitlines()
        build_initial_checkpoint(init, lines, seed=opts.seed, shape=opts.shape)

    run = work / "run"
    argv = finetune_argv(opts, init, run)
    report["commands"]["train"] = "qwen-audio finetune " + shlex.join(argv)
    with timed("train"):
        shutil.rmtree(run, ignore_errors=True)
        _finetune(argv)
    runs = [run]
    if opts.encoder_epochs:
        runs.append(work / "run-encoder")
        argv = encoder_stage_argv(opts, run, runs[-1])
        report["commands"]["encoder"] = "qwen-audio finetune " + shlex.join(argv)
        with timed("encoder"):
            shutil.rmtree(runs[-1], ignore_errors=True)
            _finetune(argv)
    if opts.encoder_epochs and opts.refine_steps:
        runs.append(work / "run-refine")
        argv = refine_stage_argv(opts, runs[-2], runs[-1])
        report["commands"]["refine"] = "qwen-audio finetune " + shlex.join(argv)
        with timed("refine"):
            shutil.rmtree(runs[-1], ignore_errors=True)
            _finetune(argv)
    plot_stages(runs, work / "loss.png")

    model_dir = work / "demo-model"
    with timed("export"):
        report["model"] = export_fp16(runs[-1], model_dir)

    if opts.evaluate:
        from qwen_audio.eval.runner import run_eval

        report["eval"] = {}
        with timed("eval"):
            for name, (rel, metric) in EVAL_SETS.items():
                out = work / "eval" / name
                shutil.rmtree(out, ignore_errors=True)
                argv = eval_argv(model_dir, data_dir / rel, out, metric, opts.eval_batch_size)
                report["commands"][f"eval_{name}"] = "qwen-audio eval run " + shlex.join(argv)
                result = run_eval(
                    "generic", data_dir / rel, out, model=str(model_dir), metric=metric,
                    language="en" if metric == "wer" else None, prompt_variant="instruct",
                    prompt_override="{prompt}", batch_size=opts.eval_batch_size, progress=False,
                )  # fmt: skip
                report["eval"][name] = {"metric": metric, "value": result.metrics[name]}
        with timed("samples"):
            report["samples"] = pick_samples(work, work / "samples", opts.seed, opts.scale)
    report["seconds"]["total"] = round(time.perf_counter() - t_all, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_chat_eval(data_dir: Path) -> Path:
    """Voice chat on the held-out spoken questions (the question is the audio), from valid.jsonl,
    as a generic eval file: the prompt is empty, so the user turn holds only the audio."""
    rows = []
    for line in (data_dir / "valid.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        if len(messages) != 2:
            continue  # a clip with follow-up questions: not a voice chat row
        user, answer = messages
        parts = user["content"]
        if len(parts) == 1 and parts[0]["audio_url"].startswith("chat/heldout/"):
            rows.append({"audio": "../" + parts[0]["audio_url"], "prompt": "",
                         "gt": answer["content"], "source": "demo_chat_heldout"})  # fmt: skip
    path = data_dir / EVAL_SETS["demo_chat_heldout"][0]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def plot_stages(runs: list[Path], path: Path) -> Path | None:
    """The loss curves of the training stages end to end, a dashed line where each starts."""
    from qwen_audio.train.logs import plot_loss

    rows, starts, offset = [], [], 0
    for run in runs:
        with open(run / "logs" / "train.csv", newline="") as f:
            stage = list(csv.DictReader(f))
        if offset:
            starts.append(offset)
        rows += [{**r, "step": int(r["step"]) + offset} for r in stage]
        offset += int(stage[-1]["step"]) if stage else 0
    return plot_loss(rows, path, tuple(starts))


def export_fp16(run: Path, out: Path) -> dict:
    """The trained checkpoint with float16 weights; returns its size."""
    from qwen_audio.config import ModelConfig
    from qwen_audio.model.loader import load_model
    from qwen_audio.train.export import save_hub_checkpoint

    shutil.rmtree(out, ignore_errors=True)
    model = load_model(
        run, ModelConfig.from_dir(run), dtype=torch.float32, device=torch.device("cpu")
    )
    save_hub_checkpoint(model, run, out, dtype=torch.float16)
    for extra in ("train_options.json",):  # run metadata, not part of a checkpoint
        (out / extra).unlink(missing_ok=True)
    counts = parameter_counts(model.state_dict())
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return {"parameters": counts, "bytes": sum(files.values()), "files": files}


def pick_samples(work: Path, out: Path, seed: int, scale: float) -> dict:
    """One held-out sentence (held-out voice) transcribed exactly and its voice named right, and
    one siren classified right, copied as 16-bit WAV; returns what each holds."""
    out.mkdir(parents=True, exist_ok=True)
    heldout_specs = demo_data.plan(seed, scale).groups["speech/heldout"]
    voice_right = {
        row["audio_path"]
        for line in (work / "eval" / "demo_voice" / "predictions.jsonl").read_text().splitlines()
        for row in [json.loads(line)]
        if row["response"].strip() == row["gt"]
    }
    picks = {}
    for name, source, want in (
        ("speech.wav", "demo_asr_heldout", None),
        (f"{SAMPLE_SOUND}.wav", "demo_sound", SAMPLE_SOUND),
    ):
        folder = work / "eval" / source
        for line in (folder / "predictions.jsonl").read_text().splitlines():
            row = json.loads(line)
            words = len(row["gt"].split())
            ok = row["response"].strip() == row["gt"]
            if source == "demo_asr_heldout":
                ok = ok and row["audio_path"] in voice_right
            if ok and (want == row["gt"] or (want is None and 6 <= words <= 10)):
                break
        else:
            log.warning("no correctly answered %s row to use as a sample", source)
            continue
        audio, rate = sf.read(row["audio_path"], dtype="int16")
        sf.write(out / name, audio, rate, subtype="PCM_16")
        # normpath, not resolve: WORK/data may be a link to a data set made earlier
        source_clip = Path(os.path.normpath(row["audio_path"])).relative_to(work / "data")
        picks[name] = {"gt": row["gt"], "prompt": row.get("prompt"), "from": str(source_clip)}
        if source == "demo_asr_heldout":
            spec = heldout_specs[int(Path(row["audio_path"]).stem)].speech
            picks[name]["voice"] = {
                k: getattr(spec, k)
                for k in ("accent", "variant", "gender", "rate_class", "wpm", "pitch")
            }
    (out / "samples.json").write_text(json.dumps(picks, indent=2) + "\n")
    return picks


def install(work: Path, assets: Path = ASSETS) -> None:
    """Copy WORK/demo-model and WORK/samples into the package's assets folder."""
    samples = Path(work) / "samples" / "samples.json"
    if not samples.exists() or len(json.loads(samples.read_text())) < 2:
        raise FileNotFoundError(f"{samples} does not list both samples: nothing installed")
    for name in ("demo-model", "samples"):
        src, dst = Path(work) / name, assets / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def _make_data(data_dir: Path, opts: RecipeOptions) -> dict:
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("seed") == opts.seed and manifest.get("scale") == opts.scale:
            log.info("reusing the data in %s (same seed and scale)", data_dir)
            return {"reused": True, **_data_summary(manifest)}
    shutil.rmtree(data_dir, ignore_errors=True)
    manifest = demo_data.generate(data_dir, seed=opts.seed, scale=opts.scale, workers=opts.workers)
    return {"reused": False, **_data_summary(manifest)}


def _data_summary(manifest: dict) -> dict:
    keys = ("rows", "sentences", "audio_seconds", "generation_seconds", "espeak_ng")
    return {k: manifest.get(k) for k in keys}


def _finetune(argv: list[str]) -> None:
    from qwen_audio.train.cli import add_finetune_arguments, run_finetune

    parser = argparse.ArgumentParser(prog="qwen-audio finetune")
    add_finetune_arguments(parser)
    code = run_finetune(parser.parse_args(argv))
    gc.collect()  # the stage's trainer (its caches: GBs) before the next stage allocates
    if code:
        raise RuntimeError(f"qwen-audio finetune failed (exit code {code})")


class _Timer:
    def __init__(self, seconds: dict, step: str) -> None:
        self.seconds, self.step = seconds, step

    def __enter__(self) -> None:
        log.info("demo recipe: %s", self.step)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self.step] = round(time.perf_counter() - self.t0, 1)


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
