"""Tasks (prompts, data rules, published numbers) and scoring of prediction files."""

from __future__ import annotations

import json

import pytest

from qwen_audio.asr import chat_instruction
from qwen_audio.eval import metrics, tasks
from qwen_audio.eval.cli import score_file
from qwen_audio.eval.data import load_rows
from qwen_audio.eval.score import read_predictions, score_predictions
from qwen_audio.eval.tasks import (
    COVOST2_PAIRS,
    TASKS,
    DataError,
    EvalRow,
    get_task,
    resolve_prompt,
)


def test_registry_holds_the_benchmarks():
    expected = {
        "librispeech", "aishell2", "cv15_en", "cv15_zh", "cv15_yue", "cv15_fr", "fleurs_zh",
        "covost2", "meld", "vocalsound", "airbench_chat", "airbench_foundation", "generic",
    }  # fmt: skip
    assert set(TASKS) == expected
    assert get_task("fluers_zh").name == "fleurs_zh"  # the original's spelling
    assert get_task("cv15_yue").metric == "cer" and get_task("cv15_fr").metric == "wer"
    assert len(COVOST2_PAIRS) == 36
    with pytest.raises(KeyError, match="known tasks"):
        get_task("nope")


def test_published_numbers_match_source_names():
    libri = get_task("librispeech")
    assert libri.published_for("librispeech_dev_clean").value == 0.017
    assert libri.published_for("librispeech_test-other").value == 0.040
    assert libri.published_for("librispeech_train") is None
    covost = get_task("covost2")
    assert covost.published_for("covost2_en_zh-CN_test").value == 45.6
    assert covost.published_for("covost2_zh_en_test").value == 24.0
    assert covost.published_for("covost2_en_ja_test") is None
    assert get_task("aishell2").published_for("aishell2_test_android").value == 0.029
    assert get_task("cv15_en").published_for("anything").value == 0.087
    assert get_task("meld").published_for("meld").value == 0.535


def _row(source="covost2_en_de_test", prompt="row prompt"):
    return EvalRow(id="1", audio="a.wav", prompt=prompt, gt="x", source=source)


def test_prompts_and_variants():
    asr, st = get_task("librispeech"), get_task("covost2")
    assert resolve_prompt(asr, _row("librispeech_test_clean")) == ("row prompt", False)
    # the published base prompt, and the instruct variant: what `qwen-audio transcribe` sends
    assert tasks.ASR_PROMPT == "Detect the language and recognize the speech: <|{lang}|>"
    assert resolve_prompt(asr, _row(), variant="instruct") == (
        "Transcribe the speech. The speech is in English.",
        True,
    )
    assert resolve_prompt(asr, _row(), variant="instruct")[0] == chat_instruction(
        "transcribe", "en"
    )
    assert resolve_prompt(get_task("cv15_yue"), _row(), variant="instruct")[0] == (
        "Transcribe the speech. The speech is in Cantonese."
    )
    assert resolve_prompt(st, _row("covost2_en_zh_test"), variant="instruct")[0] == (
        "Translate the speech in this audio into Mandarin. Reply with the translation only."
    )
    assert resolve_prompt(asr, _row(), override="Say: {prompt}") == ("Say: row prompt", False)
    assert resolve_prompt(st, _row(), override="{x} into {target_language}") == (
        "{x} into German",
        False,
    )
    with pytest.raises(ValueError, match="no instruct prompt"):
        resolve_prompt(get_task("meld"), _row(), variant="instruct")
    assert resolve_prompt(get_task("airbench_chat"), _row())[1] is True


def test_rows_without_prompt_get_the_task_default(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    rows = [
        {"audio": "a.wav", "gt": "Hallo", "source": "covost2_en_de_test"},
        {"audio": "a.wav", "gt": "你好", "source": "covost2_en_zh_test", "id": "z"},
    ]
    (tmp_path / "covost2_eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load_rows(get_task("covost2"), tmp_path)
    assert loaded[0].prompt == "Detect the language and translate the speech into German: <|en|>"
    assert loaded[1].prompt.endswith("into Mandarin: <|en|>")
    assert [r.id for r in loaded] == ["0", "z"]
    assert loaded[0].audio == str(tmp_path / "a.wav")


def test_missing_data_says_where_it_goes(tmp_path):
    with pytest.raises(DataError) as e:
        load_rows(get_task("librispeech"), tmp_path)
    message = str(e.value)
    assert "librispeech_eval.jsonl" in message and '"audio"' in message and '"source"' in message
    (tmp_path / "librispeech_eval.jsonl").write_text('{"audio": "nope.flac", "gt": "x"}\n')
    with pytest.raises(DataError, match="1 of 1 audio files are missing"):
        load_rows(get_task("librispeech"), tmp_path)


def test_airbench_meta_files(tmp_path):
    folder = tmp_path / "Speaker_Gender_Recognition_vox"
    folder.mkdir()
    (folder / "x.wav").write_bytes(b"RIFF")
    meta = [
        {"path": "x.wav", "question": "Who speaks?", "choice_a": "a man", "choice_b": "a woman",
         "answer_gt": "a woman", "task_name": "Speaker_Gender_Recognition",
         "dataset_name": "vox", "uniq_id": 7},
    ]  # fmt: skip
    (tmp_path / "Foundation_meta.json").write_text(json.dumps(meta))
    (row,) = load_rows(get_task("airbench_foundation"), tmp_path)
    assert row.id == "7" and row.source == "Speaker_Gender_Recognition_vox"
    assert row.prompt.endswith("Who speaks?\nA. a man\nB. a woman\nC. None\nD. None")
    assert row.audio == str(folder / "x.wav")


def _asr_rows():
    return [
        {"gt": "the cat sat", "response": "the cat sit", "source": "librispeech_dev_clean"},
        {"gt": "hello world", "response": "hello world", "source": "librispeech_dev_clean"},
        {"gt": "good morning", "response": "good evening", "source": "librispeech_test_other"},
    ]


def test_score_predictions_per_source():
    scores = score_predictions("librispeech", _asr_rows())
    assert scores == {
        "librispeech_dev_clean": pytest.approx(1 / 5),
        "librispeech_test_other": pytest.approx(1 / 2),
    }
    zh = score_predictions(
        "aishell2", [{"gt": "今天天气很好", "response": "今天天气真好", "source": "aishell2_ios"}]
    )
    assert zh == {"aishell2_ios": pytest.approx(1 / 6)}


def test_score_predictions_bleu_and_accuracy():
    rows = [
        {"gt": "今天天气很好我们去公园", "response": "今天天气很好我们去公园", "source": "covost2_en_zh_test"},
        {"gt": "Das ist gut", "response": "Das ist schlecht", "source": "covost2_en_de_test"},
    ]  # fmt: skip
    scores = score_predictions("covost2", rows)
    assert scores["covost2_en_zh_test"] == pytest.approx(100.0)
    assert scores["covost2_en_de_test"] == pytest.approx(
        metrics.corpus_bleu(["Das ist gut"], ["Das ist schlecht"], "13a")
    )
    acc = score_predictions(
        "meld",
        [{"gt": "sadness", "response": r, "source": "meld"} for r in (" sadness", "Sadness")],
    )
    assert acc == {"meld": 0.5}


def test_score_foundation():
    base = {"choice_a": "dog", "choice_b": "cat", "task_name": "Animal", "dataset_name": "x"}
    rows = [
        {**base, "answer_gt": "cat", "response": "B"},
        {**base, "answer_gt": "dog", "response": "B. cat"},
        {**base, "answer_gt": "dog", "response": "hmm"},
    ]
    assert score_predictions("airbench_foundation", rows) == {"Animal_x": 0.5}


def test_generic_task_takes_metric_and_language():
    rows = [{"gt": "你好", "response": "你好", "source": "mine"}]
    assert score_predictions(get_task("generic", metric="cer", language="zh"), rows) == {
        "mine": 0.0
    }
    assert get_task("generic", metric="wer", language="yue").metric == "cer"
    with pytest.raises(ValueError):
        get_task("generic", metric="rouge")


def test_read_predictions_accepts_the_original_json_list_and_cut_jsonl(tmp_path):
    rows = _asr_rows()
    (tmp_path / "orig.json").write_text(json.dumps(rows))
    assert read_predictions(tmp_path / "orig.json") == rows
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"gt": "cut'
    (tmp_path / "cut.jsonl").write_text(text)
    assert read_predictions(tmp_path / "cut.jsonl") == rows


def test_cli_score_prints_table_then_json(tmp_path, capsys):
    from qwen_audio.cli import main

    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _asr_rows()) + "\n")
    out_dir = tmp_path / "report"
    code = main(
        ["eval", "score", "--task", "librispeech", "--predictions", str(path),
         "--output", str(out_dir)]
    )  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {
        "librispeech_dev_clean": pytest.approx(0.2),
        "librispeech_test_other": pytest.approx(0.5),
    }
    table = "\n".join(lines[:-1])
    assert "| librispeech_dev_clean | 2 | 20.00% | 1.70% | +18.30 |" in table
    assert (out_dir / "metrics.json").is_file() and (out_dir / "report.md").is_file()
    assert (out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_file_stream(tmp_path):
    import io

    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _asr_rows()))
    stream = io.StringIO()
    score_file("librispeech", path, stream=stream)
    assert json.loads(stream.getvalue().strip().splitlines()[-1])["librispeech_test_other"] == 0.5


def test_cli_score_errors_are_one_line(tmp_path, capsys):
    from qwen_audio.cli import main

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"gt": "x", "source": "s"}) + "\n")
    assert main(["eval", "score", "--task", "meld", "--predictions", str(path)]) == 2
    assert "no response field" in capsys.readouterr().err
