"""Training data: the three row formats, the loss mask, the bad-row report, batching, packing."""

from __future__ import annotations

import pytest
import torch

from qwen_audio.prompt import PromptRenderer, load_chat_template
from qwen_audio.tokenizer import Tokenizer
from qwen_audio.train.batching import StepBatches, micro_batches, pack, plan_epoch
from qwen_audio.train.cli import main as train_main
from qwen_audio.train.data import load_data, parse_row, render, rendered_bytes
from tests.test_train_utils import ASR_PROMPT, asr_rows, one_thread, speak, write_jsonl  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return speak(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="module")
def renderer(checkpoints):
    path = checkpoints("mha")
    return PromptRenderer(Tokenizer.from_dir(path), load_chat_template(path), 128)


def detok(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def runs(mask: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of every run of True."""
    out, start = [], None
    for i, m in enumerate([*mask, False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def chat_row(clips):
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": clips[0].name},
                    {"type": "text", "text": "What is said?"},
                ],
            },
            {"role": "assistant", "content": "hello world"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And here?"},
                    {"type": "audio", "audio": clips[1].name},
                ],
            },
            {"role": "assistant", "content": "good morning"},
        ]
    }


def swift_row(clips):
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<audio>What is said?"},
            {"role": "assistant", "content": "hello world"},
            {"role": "user", "content": "And here?<audio>"},
            {"role": "assistant", "content": "good morning"},
        ],
        "audios": [clips[0].name, clips[1].name],
    }


def sharegpt_row(clips):
    return {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "<audio>What is said?"},
            {"from": "gpt", "value": "hello world"},
            {"from": "human", "value": "And here?<audio>"},
            {"from": "gpt", "value": "good morning"},
        ],
        "audios": [clips[0].name, clips[1].name],
    }


@pytest.mark.parametrize("make_row", [chat_row, swift_row, sharegpt_row])
def test_loss_mask_covers_exactly_the_assistant_answers(renderer, clips, make_row):
    tok = renderer.tokenizer
    row = parse_row(make_row(clips), 1, clips[0].parent, dpo=False)
    out = render(renderer, row.sequences[0])
    ids, mask = out.token_ids, out.loss_mask
    assert len(ids) == len(mask) and out.num_audio_tokens > 0
    spans = runs(mask)
    assert [detok(tok, ids[a:b]) for a, b in spans] == [
        "hello world<|im_end|>",
        "good morning<|im_end|>",
    ]
    for a, _ in spans:  # each answer starts right after the assistant header
        assert detok(tok, ids[:a]).endswith("<|im_start|>assistant\n")
    assert not any(m for i, m in zip(ids, mask) if i == tok.audio_token_id)
    expected = len(tok.encode("hello world")) + len(tok.encode("good morning")) + 2
    assert sum(mask) == expected
    # system, user text, audio and the template's own tokens are all outside the mask
    unmasked = detok(tok, [i for i, m in zip(ids, mask) if not m and i != tok.audio_token_id])
    for text in ("Be brief.", "What is said?", "And here?", "Audio 1:", "Audio 2:"):
        assert text in unmasked


def test_the_three_formats_render_the_same_conversation(renderer, clips):
    rendered = [
        render(renderer, parse_row(make(clips), 1, clips[0].parent, dpo=False).sequences[0])
        for make in (chat_row, swift_row, sharegpt_row)
    ]
    assert rendered[0].token_ids == rendered[1].token_ids == rendered[2].token_ids
    assert rendered[0].loss_mask == rendered[1].loss_mask == rendered[2].loss_mask


def test_base_rows_learn_the_target_and_eos_only(renderer, clips):
    tok = renderer.tokenizer
    row = parse_row(asr_rows(clips)[0], 1, clips[0].parent, dpo=False)
    out = render(renderer, row.sequences[0])
    assert detok(tok, out.token_ids[: out.loss_mask.index(True)]).startswith(
        "<|audio_bos|><|AUDIO|>"
    )
    masked = [i for i, m in zip(out.token_ids, out.loss_mask) if m]
    assert masked == tok.encode("hello world") + [tok.eos_token_id]
    assert detok(tok, out.token_ids).endswith(ASR_PROMPT + "hello world<|endoftext|>")


def test_preference_rows_learn_only_the_final_answer(renderer, clips):
    tok = renderer.tokenizer
    chat = {
        "messages": chat_row(clips)["messages"][:-1],
        "chosen": "good morning",
        "rejected": {"role": "assistant", "content": "bad evening"},
    }
    swift = {**swift_row(clips), "rejected_response": "bad evening"}
    base = {"audio": clips[0].name, "prompt": ASR_PROMPT, "chosen": "hi", "rejected": "bye"}
    for obj, answers in ((chat, ("good morning", "bad evening")), (swift, None), (base, None)):
        row = parse_row(obj, 1, clips[0].parent, dpo=True)
        assert len(row.sequences) == 2
        outs = [render(renderer, s) for s in row.sequences]
        texts = [detok(tok, [i for i, m in zip(o.token_ids, o.loss_mask) if m]) for o in outs]
        if answers:
            assert texts == [a + "<|im_end|>" for a in answers]
        assert all(len(runs(o.loss_mask)) == 1 for o in outs)


def test_bad_rows_are_reported_with_file_and_line(tmp_path, clips, checkpoints, capsys):
    for clip in clips:
        (tmp_path / clip.name).write_bytes(clip.read_bytes())
    (tmp_path / "broken.wav").write_text("this is not audio")
    good = asr_rows(clips)
    rows = [
        good[0],
        {"audio": "missing.wav", "prompt": ASR_PROMPT, "gt": "x"},  # 2: no such file
        good[1],
        {"audio": "broken.wav", "prompt": ASR_PROMPT, "gt": "x"},  # 4: unreadable
        {  # 5: two tags, one audio
            "messages": [
                {"role": "user", "content": "<audio><audio>Compare."},
                {"role": "assistant", "content": "same"},
            ],
            "audios": [clips[0].name],
        },
        {**good[2], "gt": "the cat sat down " * 30},  # 6: over --max-length
        "{not json",  # 7
        {"text": "no known format"},  # 8
        {"messages": [{"role": "user", "content": "hi"}]},  # 9: nothing to learn
        good[3],
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    args = ["finetune", "--model", checkpoints("mha"), "--data", data, "--output", out]
    args += ["--max-length", "80", "--no-progress", "--no-tensorboard", "--batch-size", "2"]
    args = [str(a) for a in args]

    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "7 of 10 rows" in err
    for line, reason in [
        (2, "audio file not found"),
        (4, "broken.wav"),
        (5, "placeholder mismatch: 2 <audio> tag(s) in the messages but 1 audio(s)"),
        (6, "over --max-length 80"),
        (7, "invalid JSON"),
        (8, "unknown row format"),
        (9, "nothing to learn"),
    ]:
        assert (
            f"{data}:{line}: " in err and reason in err.split(f"{data}:{line}: ")[1].split("\n")[0]
        )
    for line in (1, 3, 10):
        assert f"{data}:{line}:" not in err
    assert not (out / "adapter_model.safetensors").exists()  # nothing was trained
    assert len((out / "bad_rows.txt").read_text().splitlines()) == 7

    assert train_main([*args, "--skip-bad", "--max-steps", "2"]) == 0
    assert (out / "adapter_model.safetensors").exists()


def test_a_file_gone_after_the_check_does_not_stop_training(tmp_path, clips, renderer):
    for clip in clips[:2]:
        (tmp_path / clip.name).write_bytes(clip.read_bytes())
    data = load_data(
        write_jsonl(tmp_path / "d.jsonl", asr_rows(clips[:2])), renderer, max_length=4096
    )
    assert not data.bad
    (tmp_path / clips[1].name).unlink()
    steps = StepBatches(data, renderer, batch_size=2, grad_accum=1, seed=0)
    (batch,) = steps[0]
    assert batch.num_seqs == 2 and len(batch.features) == 1  # the missing row is a stub


def test_rows_rendered_by_the_check_feed_training_up_to_the_budget(tmp_path, clips, renderer):
    for clip in clips[:3]:
        (tmp_path / clip.name).write_bytes(clip.read_bytes())
    rows = asr_rows(clips[:3])
    rows.insert(1, {"audio": "missing.wav", "prompt": ASR_PROMPT, "gt": "gone"})  # a bad row
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    fresh = load_data(path, renderer, max_length=4096)  # keeps nothing: training renders
    assert fresh.rendered == {} and len(fresh.bad) == 1
    kept = load_data(path, renderer, max_length=4096, keep_rendered_bytes=1 << 30)
    assert sorted(kept.rendered) == [0, 1, 2]  # indexes of the good rows
    first = rendered_bytes(kept.rendered[0])
    one = load_data(path, renderer, max_length=4096, keep_rendered_bytes=first)
    assert list(one.rendered) == [0]  # the budget holds the first row only

    expected = StepBatches(fresh, renderer, batch_size=3, grad_accum=1, seed=0)[0][0]
    for clip in clips[:3]:
        (tmp_path / clip.name).unlink()  # training must not need the files again
    steps = StepBatches(kept, renderer, batch_size=3, grad_accum=1, seed=0, cache_bytes=1 << 30)
    assert kept.rendered == {}  # taken over by the batches' cache
    (batch,) = steps[0]
    assert batch.num_seqs == 3 and torch.equal(batch.input_ids, expected.input_ids)
    assert all(torch.equal(a, b) for a, b in zip(batch.features, expected.features))
    # a smaller training cache than the check's budget drops the rows it cannot hold
    small = StepBatches(one, renderer, batch_size=3, grad_accum=1, seed=0, cache_bytes=0)
    assert small._cache == {} and small._cache_free == 0


def test_epochs_are_length_grouped_seeded_and_complete():
    lengths = [5, 50, 7, 48, 9, 52, 6, 49, 8, 51, 100]
    a = plan_epoch(lengths, 0, 1, 2)
    assert a == plan_epoch(lengths, 0, 1, 2) and a != plan_epoch(lengths, 1, 1, 2)
    assert all(len(b) == 2 for b in a) and len(a) == 5  # the odd row out is dropped
    assert 10 in a[0]  # the longest row comes first
    assert len({i for b in a for i in b}) == 10
    for b in a:  # rows of similar length share a batch: no short row next to a long one
        assert len({lengths[i] < 10 for i in b}) == 1


def test_micro_batches_do_not_depend_on_the_process_split():
    lengths = [3, 9, 4, 8, 5, 7, 6, 2]
    rows = list(range(8))
    one_process = micro_batches(rows, lengths, 0, 1, 4)
    four = [micro_batches(rows, lengths, r, 4, 1)[0] for r in range(4)]
    assert one_process == four
    two = [
        m for g in range(2) for m in (micro_batches(rows, lengths, r, 2, 2)[g] for r in range(2))
    ]
    assert two == one_process
    assert sorted(i for m in one_process for i in m) == rows


def test_pack_lays_sequences_back_to_back(renderer, clips):
    rows = [parse_row(r, 1, clips[0].parent, dpo=False) for r in asr_rows(clips[:2])]
    prompts = [render(renderer, r.sequences[0]) for r in rows]
    batch = pack(prompts)
    n0 = len(prompts[0].token_ids)
    assert batch.seq_lens == [n0, len(prompts[1].token_ids)]
    assert batch.positions.tolist() == list(range(n0)) + list(range(batch.seq_lens[1]))
    assert batch.input_ids.tolist() == prompts[0].token_ids + prompts[1].token_ids
    ids = batch.input_ids.tolist()
    for row, target, seq in zip(batch.pred_rows.tolist(), batch.targets.tolist(), batch.pred_seq):
        assert ids[row + 1] == target  # the logits at a row predict the next token
        assert (row + 1 >= n0) == bool(seq)
    masks = prompts[0].loss_mask + prompts[1].loss_mask
    assert batch.pred_rows.tolist() == [i - 1 for i, m in enumerate(masks) if m]
    assert len(batch.features) == 2 and batch.clip_index == [0, 1]
    # a DPO pair's two sequences share their audio: it is encoded once
    assert pack([prompts[0], prompts[0]]).clip_index == [0, 0]
