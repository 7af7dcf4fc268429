"""AIR-Bench chat scoring with any OpenAI-compatible judge model.

The judge sees the audio's text description, the question, the reference answer as Assistant 1
and the model's answer as Assistant 2, and replies with two 1-10 scores on one line. Each item is
judged twice, the second time with the answers swapped, and the model's score is averaged over
the two orders. Category scores as the benchmark defines them:
speech = speech_QA + speech_dialogue_QA, sound = sound_QA + sound_generation_QA,
music = music_QA + music_generation_analysis_QA, mixed = mean of speech_and_sound and
speech_and_music.

Every request is sent at temperature 1.0 with max_tokens 1024, as documented for the benchmark
(AIR-Bench's own score_chat.py also sends a random half of them at temperature 2.0: not repeated
here, since it makes scores depend on a coin flip).

Replies are parsed leniently (two numbers on a line, extra words allowed); a malformed reply is
asked again, then recorded as failed. Transport errors are retried with exponential backoff;
nothing here raises on a bad judge. Judgements are appended to a JSONL cache as they finish, so
an interrupted scoring run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._http import RequestFailed, RetryPolicy, endpoint, post_json
from .tasks import AIRBENCH_CATEGORIES

# AIR-Bench's judge prompt (score_chat.py), a protocol constant.
JUDGE_PROMPT = (
    "You are a helpful and precise assistant for checking the quality of the answer.\n"
    "[Detailed Audio Description]\nXAudioX\n[Question]\nXQuestionX\n"
    "[The Start of Assistant 1s Answer]\nXAssistant1X\n[The End of Assistant 1s Answer]\n"
    "[The Start of Assistant 2s Answer]\nXAssistant2X\n[The End of Assistant 2s Answer]\n"
    "[System]\nWe would like to request your feedback on the performance of two AI assistants "
    "in response to the user question and audio description displayed above. AI assistants are "
    "provided with detailed audio descriptions and questions.\nPlease rate the helpfulness, "
    "relevance, accuracy, and comprehensiveness of their responses. Each assistant receives an "
    "overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance. Please output a single line containing only two values indicating the scores "
    "for Assistant 1 and 2, respectively. The two scores are separated by a space."
)
ORDERS = ("gt_first", "model_first")  # who is Assistant 1
MIXED_PARTS = ("speech_and_sound", "speech_and_music")
REPORTED_CATEGORIES = ("speech", "sound", "music", "mixed")


@dataclass(frozen=True)
class JudgeConfig:
    url: str  # base URL of the OpenAI-compatible API ("http://host:8000/v1")
    model: str
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, if it is set
    temperature: float = 1.0
    max_tokens: int = 1024
    retry: RetryPolicy = RetryPolicy()
    parse_attempts: int = 3  # a malformed reply is asked again, up to this many tries in all
    concurrency: int = 8  # requests in flight
    timeout_s: float = 300.0


@dataclass(frozen=True)
class JudgeItem:
    id: str
    task_name: str
    question: str
    answer_gt: str
    response: str
    meta_info: str


@dataclass
class Judgement:
    """One judge call: an item in one order."""

    id: str
    task_name: str
    order: str  # "gt_first" | "model_first"
    model_score: float | None = None
    reference_score: float | None = None
    reply: str = ""
    error: str = ""  # why it failed; "" on success
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.model_score is not None


@dataclass
class JudgeSummary:
    scores: dict[str, float]  # category -> the model's mean score (both orders averaged)
    reference_scores: dict[str, float]  # category -> the reference answers' mean score
    counts: dict[str, int]  # category -> items with at least one successful judgement
    failed: int  # judgements that failed (out of 2 per item)
    judgements: list[Judgement] = field(default_factory=list)


def build_prompt(item: JudgeItem, order: str) -> str:
    first, second = (
        (item.answer_gt, item.response) if order == "gt_first" else (item.response, item.answer_gt)
    )
    # Sequential replaces, in the benchmark's order.
    return (
        JUDGE_PROMPT.replace("XAudioX", item.meta_info)
        .replace("XQuestionX", item.question)
        .replace("XAssistant1X", first)
        .replace("XAssistant2X", second)
    )


_NUMBER_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?!\w)")  # whole numbers only: not "gpt4"
_NOISE_RE = re.compile(r"assistant\s*[12]|/\s*10\b", re.IGNORECASE)  # "Assistant 1", "8/10"


def parse_scores(reply: str) -> tuple[float, float] | None:
    """The two scores of a judge reply, or None when it has no clear pair in 0..10.

    The first line holding exactly two numbers wins ("8 7", "Scores: 8, 7", "8.5 7 -- ...");
    failing that, a reply with exactly two numbers in all ("Assistant 1: 8\\nAssistant 2: 7").
    """
    text = _NOISE_RE.sub(" ", reply)
    for line in text.splitlines():
        numbers = _NUMBER_RE.findall(line)
        if len(numbers) == 2:
            return _in_range(numbers)
    numbers = _NUMBER_RE.findall(text)
    return _in_range(numbers) if len(numbers) == 2 else None


def _in_range(numbers: list[str]) -> tuple[float, float] | None:
    a, b = float(numbers[0]), float(numbers[1])
    return (a, b) if 0 <= a <= 10 and 0 <= b <= 10 else None


def judge_items(row_dicts: Iterable[dict]) -> tuple[list[JudgeItem], list[str]]:
    """Prediction rows -> items to judge, and the ids skipped for having no response."""
    items, skipped, no_meta = [], [], []
    for i, r in enumerate(row_dicts):
        rid = str(r.get("id", r.get("uniq_id", i)))
        if r.get("response") is None:
            skipped.append(rid)
            continue
        if r.get("meta_info") is None:
            no_meta.append(rid)
            continue
        items.append(
            JudgeItem(
                id=rid,
                task_name=str(r.get("task_name", r.get("source", ""))),
                question=str(r.get("question", r.get("prompt", ""))),
                answer_gt=str(r.get("answer_gt", r.get("gt", ""))),
                response=str(r["response"]),
                meta_info=str(r["meta_info"]),
            )
        )
    if no_meta:
        raise ValueError(
            f"{len(no_meta)} rows have no `meta_info` (the audio description the judge reads), "
            f"e.g. id {no_meta[0]}; use AIR-Bench's Chat_meta.json rows"
        )
    return items, skipped


class Judge:
    def __init__(self, config: JudgeConfig, *, client=None, sleep: Callable = time.sleep):
        import httpx

        self.config = config
        self.url = endpoint(config.url, "/chat/completions")
        key = os.environ.get(config.api_key_env, "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client or httpx.Client(timeout=config.timeout_s)
        self.sleep = sleep

    def judge(self, item: JudgeItem, order: str) -> Judgement:
        """One judgement; failures are recorded in the result, never raised."""
        result = Judgement(id=item.id, task_name=item.task_name, order=order)
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": build_prompt(item, order)}],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        for _ in range(self.config.parse_attempts):
            result.attempts += 1
            try:
                reply = post_json(
                    self.client, self.url, payload, headers=self.headers,
                    retry=self.config.retry, sleep=self.sleep,
                )  # fmt: skip
                result.reply = str(reply["choices"][0]["message"]["content"] or "")
            except RequestFailed as e:
                result.error = str(e)
                return result
            except (KeyError, IndexError, TypeError) as e:
                result.error = f"unexpected reply shape: {e!r}"
                continue
            scores = parse_scores(result.reply)
            if scores is None:
                result.error = f"malformed reply: {result.reply[:200]!r}"
                continue
            first, second = scores
            result.reference_score, result.model_score = (
                (first, second) if order == "gt_first" else (second, first)
            )
            result.error = ""
            return result
        return result

    def run(
        self, items: list[JudgeItem], *, cache: str | os.PathLike | None = None, progress=True
    ) -> list[Judgement]:
        """Judge every item in both orders, reusing successful judgements found in `cache`."""
        done: dict[tuple[str, str], Judgement] = {}
        if cache is not None and Path(cache).is_file():
            for j in _read_cache(Path(cache)):
                if j.ok:
                    done[(j.id, j.order)] = j
        todo = [(it, o) for it in items for o in ORDERS if (it.id, o) not in done]
        from tqdm import tqdm

        out = open(cache, "a", encoding="utf-8") if cache is not None else None  # noqa: SIM115
        try:
            bar = tqdm(total=len(todo), desc="judge", unit="call", disable=not progress)
            with ThreadPoolExecutor(max_workers=max(1, self.config.concurrency)) as pool:
                futures = [pool.submit(self.judge, it, o) for it, o in todo]
                for future in as_completed(futures):
                    j = future.result()
                    done[(j.id, j.order)] = j
                    if out is not None:
                        out.write(json.dumps(asdict(j), ensure_ascii=False) + "\n")
                        out.flush()
                    bar.update()
            bar.close()
        finally:
            if out is not None:
                out.close()
        wanted = {(it.id, o) for it in items for o in ORDERS}
        return [j for key, j in done.items() if key in wanted]


def _read_cache(path: Path) -> list[Judgement]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(Judgement(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line cut by an interruption
    return out


def category_of(task_name: str) -> str:
    return AIRBENCH_CATEGORIES.get(task_name, task_name)


def _mean_over_orders(judgements: list[Judgement], attr: str) -> float | None:
    per_order = []
    for order in ORDERS:
        values = [getattr(j, attr) for j in judgements if j.order == order and j.ok]
        if values:
            per_order.append(statistics.fmean(values))
    return statistics.fmean(per_order) if per_order else None


def aggregate(judgements: list[Judgement]) -> JudgeSummary:
    """Per-category scores: per order the mean over items, then the mean of the two orders."""
    by_category: dict[str, list[Judgement]] = {}
    for j in judgements:
        by_category.setdefault(category_of(j.task_name), []).append(j)
    scores, reference, counts = {}, {}, {}
    for category, js in by_category.items():
        score = _mean_over_orders(js, "model_score")
        if score is not None:
            scores[category] = score
            reference[category] = _mean_over_orders(js, "reference_score")
            counts[category] = len({j.id for j in js if j.ok})
    parts = [c for c in MIXED_PARTS if c in scores]
    if parts:
        scores["mixed"] = statistics.fmean(scores[c] for c in parts)
        reference["mixed"] = statistics.fmean(reference[c] for c in parts)
        counts["mixed"] = sum(counts[c] for c in parts)
    failed = sum(not j.ok for j in judgements)
    return JudgeSummary(scores, reference, counts, failed, judgements)


def judge_chat(
    rows: Iterable[dict],
    config: JudgeConfig,
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    client=None,
    sleep: Callable = time.sleep,
) -> JudgeSummary:
    """Score AIR-Bench chat predictions (rows with question, answer_gt/gt, response, meta_info,
    task_name/source) with the judge."""
    items, _ = judge_items(rows)
    judge = Judge(config, client=client, sleep=sleep)
    return aggregate(judge.run(items, cache=cache, progress=progress))
