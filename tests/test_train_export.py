"""Adapters in PEFT's format against transformers + peft, and merged exports against both loaders.

Tolerance: float32 logits of our model and transformers' agree to 1e-4 absolute (observed about
4e-5 here, on logits of magnitude ~10; the ops differ in order only). Our merged export and our
`LLM(base, adapter=...)` merge the same way, so they agree exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_audio import LLM
from qwen_audio.audio import load_audio
from qwen_audio.llm import load_checkpoint
from qwen_audio.train.adapters import read_adapter
from qwen_audio.train.cli import main as train_main
from qwen_audio.train.lora import LoRAOptions, add_lora
from qwen_audio.train.trainer import TrainOptions, finetune
from tests.fixtures.checkpoints import load_reference
from tests.test_train_lora import our_logits
from tests.test_train_utils import ASR_PROMPT, asr_rows, one_thread, speak, write_jsonl  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = "<|audio_bos|><|AUDIO|><|audio_eos|>" + ASR_PROMPT


@pytest.fixture(scope="module")
def trained(checkpoints, tmp_path_factory):
    """A LoRA adapter (projector trained too) after a few steps at a high rate, so that every
    adapter weight is far from its initial value; and a clip to test it on."""
    base = checkpoints("gqa1")
    folder = tmp_path_factory.mktemp("adapter")
    clips = speak(folder)
    data = write_jsonl(folder / "train.jsonl", asr_rows(clips))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    finetune(
        TrainOptions(
            model=base,
            data=data,
            output=folder / "out",
            lora=LoRAOptions(r=4, alpha=8.0, dropout=0.0),
            train_projector=True,
            max_steps=4,
            batch_size=2,
            lr=2e-2,
            progress=False,
            tensorboard=False,
        )
    )
    torch.set_num_threads(before)
    return base, folder / "out", load_audio(str(clips[0]))


def reference_logits(model, processor, samples) -> torch.Tensor:
    inputs = processor(text=TEXT, audio=[samples], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0]


def test_peft_loads_our_adapter_and_gives_our_logits(trained):
    peft = pytest.importorskip("peft")
    base, adapter, samples = trained
    ref, processor = load_reference(base)
    plain = reference_logits(ref, processor, samples)
    ref = peft.PeftModel.from_pretrained(ref, str(adapter)).eval()

    # every tensor of the file reached its module
    ours = load_file(str(adapter / "adapter_model.safetensors"))
    theirs = ref.state_dict()
    for key, value in ours.items():
        name = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if "lora_" not in key:
            name = name.replace("_projector.", "_projector.modules_to_save.default.")
        assert torch.equal(theirs[name], value), key
    assert max(v.abs().max() for k, v in ours.items() if "lora_B" in k) > 1e-2

    want = reference_logits(ref, processor, samples)
    got = our_logits(LLM(base, dtype="float32", adapter=adapter), TEXT, samples)
    assert (want - plain).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    # our training forward, adapters unmerged, agrees too
    checkpoint = load_checkpoint(base, dtype="float32")
    add_lora(checkpoint.model, LoRAOptions(r=4, alpha=8.0, dropout=0.0))
    from qwen_audio.train.adapters import load_adapter_into

    load_adapter_into(checkpoint.model, read_adapter(adapter))
    unmerged = our_logits(checkpoint, TEXT, samples)
    torch.testing.assert_close(unmerged, want, atol=1e-4, rtol=1e-4)


def test_merged_export_equals_adapter_inference_and_loads_in_transformers(trained, tmp_path):
    base, adapter, samples = trained
    out = tmp_path / "merged"
    args = ["export", "--model", base, "--adapter", adapter, "--output", out, "--merge"]
    assert train_main([str(a) for a in args]) == 0

    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "chat_template.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert (out / name).exists(), name
    assert not (out / "adapter_config.json").exists()
    keys = set(load_file(str(out / "model.safetensors")))
    assert keys == set(load_file(str(base / "model.safetensors")))  # the hub's key names

    merged = our_logits(LLM(out, dtype="float32"), TEXT, samples)
    with_adapter = our_logits(LLM(base, dtype="float32", adapter=adapter), TEXT, samples)
    assert torch.equal(merged, with_adapter)

    ref, processor = load_reference(out)
    torch.testing.assert_close(
        reference_logits(ref, processor, samples), merged, atol=1e-4, rtol=1e-4
    )


def test_adapters_with_transformers_4_names_merge_and_convert(trained, tmp_path):
    """ms-swift / LLaMA-Factory adapters made with transformers 4.x use the hub's names."""
    peft = pytest.importorskip("peft")
    base, adapter, samples = trained
    old = tmp_path / "old"
    old.mkdir()
    tensors = {
        k.replace(
            "base_model.model.model.language_model.", "base_model.model.language_model.model."
        ).replace(
            "base_model.model.model.multi_modal_projector.",
            "base_model.model.multi_modal_projector.",
        ): v
        for k, v in load_file(str(adapter / "adapter_model.safetensors")).items()
    }
    save_file(tensors, str(old / "adapter_model.safetensors"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
    (old / "adapter_config.json").write_text(json.dumps(config))

    want = our_logits(LLM(base, dtype="float32", adapter=adapter), TEXT, samples)
    assert torch.equal(our_logits(LLM(base, dtype="float32", adapter=old), TEXT, samples), want)

    converted = tmp_path / "converted"
    args = ["export", "--model", base, "--adapter", old, "--output", converted]
    assert train_main([str(a) for a in args]) == 0
    ref, processor = load_reference(base)
    ref = peft.PeftModel.from_pretrained(ref, str(converted)).eval()
    torch.testing.assert_close(
        reference_logits(ref, processor, samples), want, atol=1e-4, rtol=1e-4
    )
