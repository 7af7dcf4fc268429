"""AIR-Bench chat scoring against a scripted OpenAI-compatible judge on loopback."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qwen_audio.eval._http import RetryPolicy
from qwen_audio.eval.judge import (
    JUDGE_PROMPT,
    JudgeConfig,
    JudgeItem,
    aggregate,
    build_prompt,
    judge_chat,
    parse_scores,
)
from qwen_audio.eval.score import score_report

FAST = RetryPolicy(attempts=3, backoff_s=0.001, max_backoff_s=0.01)


class ScriptedJudge:
    """Scores the reference answer `gt:<n>` and the model's answer `model:<n>` as <n>.

    Questions steer the failure modes: "bad-once" (one malformed reply per order), "bad-always",
    "flaky" (HTTP 500 on the first call of each order), "chatty" (scores inside extra text).
    """

    def __init__(self):
        self.calls = Counter()  # (question, order) -> calls
        self.requests = []
        self.lock = threading.Lock()

    def reply(self, body: dict, headers) -> tuple[int, dict | str]:
        prompt = body["messages"][0]["content"]
        question = re.search(r"\[Question\]\n(.*)\n", prompt).group(1)
        a1 = re.search(r"Assistant 1s Answer\]\n(.*)\n", prompt).group(1)
        a2 = re.search(r"Assistant 2s Answer\]\n(.*)\n", prompt).group(1)
        order = "gt_first" if a1.startswith("gt:") else "model_first"
        with self.lock:
            self.calls[(question, order)] += 1
            n = self.calls[(question, order)]
            self.requests.append({"body": body, "auth": headers.get("Authorization")})
        s1, s2 = a1.split(":")[1], a2.split(":")[1]
        if question == "flaky" and n == 1:
            return 500, "overloaded"
        if question == "bad-always" or (question == "bad-once" and n == 1):
            text = "Both assistants did fine."
        elif question == "chatty":
            text = f"Assistant 1: {s1}/10\nAssistant 2: {s2}/10\nThe first one is more precise."
        else:
            text = f"{s1} {s2}"
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}


@pytest.fixture
def judge_server():
    script = ScriptedJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions"
            status, payload = script.reply(body, self.headers)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script
    server.shutdown()
    server.server_close()


def _row(i, task_name, question, gt_score, model_score):
    return {
        "id": str(i),
        "task_name": task_name,
        "question": question,
        "answer_gt": f"gt:{gt_score}",
        "response": f"model:{model_score}",
        "meta_info": f"audio description {i}",
    }


ROWS = [
    _row(0, "speech_QA", "q0", 8, 6),
    _row(1, "speech_dialogue_QA", "chatty", 9, 7),
    _row(2, "sound_QA", "flaky", 7, 5),
    _row(3, "sound_generation_QA", "q3", 8, 8),
    _row(4, "music_QA", "bad-once", 6, 4),
    _row(5, "music_generation_analysis_QA", "q5", 9, 3),
    _row(6, "speech_and_sound_QA", "q6", 8, 6),
    _row(7, "speech_and_music_QA", "q7", 7, 9),
    _row(8, "speech_QA", "bad-always", 10, 1),
]


def test_judge_scores_categories_with_retries_and_failures(judge_server, monkeypatch, tmp_path):
    url, script = judge_server
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    config = JudgeConfig(url=url, model="judge-x", api_key_env="MY_JUDGE_KEY", retry=FAST)
    summary = judge_chat(ROWS, config, cache=tmp_path / "judge.jsonl", progress=False)

    # speech = speech_QA + speech_dialogue_QA; the always-malformed item is left out
    assert summary.scores["speech"] == pytest.approx((6 + 7) / 2)
    assert summary.scores["sound"] == pytest.approx((5 + 8) / 2)  # survived a 500
    assert summary.scores["music"] == pytest.approx((4 + 3) / 2)  # survived a malformed reply
    assert summary.scores["speech_and_sound"] == pytest.approx(6)
    assert summary.scores["speech_and_music"] == pytest.approx(9)
    assert summary.scores["mixed"] == pytest.approx((6 + 9) / 2)
    assert summary.reference_scores["speech"] == pytest.approx((8 + 9) / 2)
    assert summary.counts["speech"] == 2
    assert summary.failed == 2  # "bad-always", in both orders

    # both orders were asked; every request carried the protocol's settings and the key
    assert script.calls[("q0", "gt_first")] == 1 and script.calls[("q0", "model_first")] == 1
    assert script.calls[("flaky", "gt_first")] == 2
    assert script.calls[("bad-once", "model_first")] == 2
    assert script.calls[("bad-always", "gt_first")] == config.parse_attempts
    for r in script.requests:
        assert r["body"]["temperature"] == 1.0
        assert r["body"]["max_tokens"] == 1024
        assert r["body"]["model"] == "judge-x"
        assert r["auth"] == "Bearer sk-test"

    # a second run reuses the cached judgements and only asks again for the failed ones
    before = sum(script.calls.values())
    again = judge_chat(ROWS, config, cache=tmp_path / "judge.jsonl", progress=False)
    assert sum(script.calls.values()) - before == 2 * config.parse_attempts
    assert again.scores == summary.scores


def test_unreachable_judge_records_failures(tmp_path):
    config = JudgeConfig(url="http://127.0.0.1:9/v1", model="x", retry=FAST, timeout_s=2)
    summary = judge_chat(ROWS[:2], config, progress=False)
    assert summary.scores == {}
    assert summary.failed == 4
    assert all("failed after 3 tries" in j.error for j in summary.judgements)


def test_score_report_for_airbench_chat(judge_server):
    url, _ = judge_server
    report = score_report(
        "airbench_chat", ROWS, judge=JudgeConfig(url=url, model="judge-x", retry=FAST)
    )
    values = report.values()
    assert list(values) == ["speech", "sound", "music", "mixed"]
    assert values["mixed"] == pytest.approx(7.5)
    assert report.task.published_for("speech").value == 7.24


def test_chat_scoring_without_judge_explains():
    with pytest.raises(ValueError, match="--judge-url"):
        score_report("airbench_chat", ROWS)


def test_rows_without_meta_info_are_refused():
    rows = [dict(ROWS[0], meta_info=None)]
    with pytest.raises(ValueError, match="meta_info"):
        judge_chat(rows, JudgeConfig(url="http://127.0.0.1:9", model="x"), progress=False)


def test_prompt_is_the_benchmark_text_in_both_orders():
    item = JudgeItem("1", "speech_QA", "What?", "REF", "MODEL", "DESC")
    first = build_prompt(item, "gt_first")
    assert first == (
        JUDGE_PROMPT.replace("XAudioX", "DESC")
        .replace("XQuestionX", "What?")
        .replace("XAssistant1X", "REF")
        .replace("XAssistant2X", "MODEL")
    )
    assert first.startswith("You are a helpful and precise assistant")
    assert first.endswith("The two scores are separated by a space.")
    assert "[The Start of Assistant 1s Answer]\nREF\n" in first
    second = build_prompt(item, "model_first")
    assert "[The Start of Assistant 1s Answer]\nMODEL\n" in second
    assert "[The Start of Assistant 2s Answer]\nREF\n" in second


@pytest.mark.parametrize(
    "reply,scores",
    [
        ("8 7", (8, 7)),
        ("8 7\n", (8, 7)),
        ("Scores: 8, 7", (8, 7)),
        ("8.5 7", (8.5, 7)),
        ("8 7\nAssistant 1 was more detailed than assistant 2.", (8, 7)),
        ("Assistant 1: 9\nAssistant 2: 4", (9, 4)),
        ("Assistant 1: 9/10, Assistant 2: 4/10", (9, 4)),
        ("Here are my scores.\n10 3", (10, 3)),
        ("Both are good.", None),
        ("8", None),
        ("8 7 6", None),
        ("12 7", None),  # out of range
        ("", None),
    ],
)
def test_parse_scores(reply, scores):
    assert parse_scores(reply) == scores


def test_aggregate_averages_the_two_orders():
    from qwen_audio.eval.judge import Judgement

    js = [
        Judgement("1", "speech_QA", "gt_first", model_score=6, reference_score=8),
        Judgement("1", "speech_QA", "model_first", model_score=8, reference_score=7),
        Judgement("2", "speech_QA", "gt_first", model_score=4, reference_score=8),
        Judgement("2", "speech_QA", "model_first", error="malformed reply"),
    ]
    summary = aggregate(js)
    # per order: gt_first mean (6+4)/2 = 5, model_first 8; then the mean of the two orders
    assert summary.scores["speech"] == pytest.approx(6.5)
    assert summary.reference_scores["speech"] == pytest.approx((8 + 7) / 2)
    assert summary.failed == 1 and summary.counts["speech"] == 2
