"""Predictors for the eval runner: our engine (`qwen_audio.LLM`) or an OpenAI-compatible server.

A predictor is any callable `list[EvalRequest] -> list[str]`; one with `iter_completed` yields
(index, text) pairs as they finish, so the runner can save each sample as soon as it is done.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..asr.prompts import AUDIO_PLACEHOLDER
from ._http import RetryPolicy, endpoint, post_json
from .tasks import SYSTEM_PROMPT

MAX_TOKENS = 256  # the original scripts' max_new_tokens (greedy, min_new_tokens 1)


@dataclass(frozen=True)
class EvalRequest:
    """What a predictor gets for one sample."""

    id: str
    audio: str  # path of the audio file
    prompt: str  # raw mode: the text after the audio tags; chat mode: the user's text
    chat: bool  # True: Instruct chat template (system turn, user turn = audio + text)

    def raw_prompt(self) -> str:
        return AUDIO_PLACEHOLDER + self.prompt

    def messages(self, audio_part: dict | None = None) -> list[dict]:
        part = audio_part or {"type": "audio", "audio": self.audio}
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [part, {"type": "text", "text": self.prompt}]},
        ]


PredictFn = Callable[[list[EvalRequest]], list[str]]


class LLMPredictor:
    """Batched greedy decoding through `qwen_audio.LLM`."""

    def __init__(self, llm, max_tokens: int = MAX_TOKENS):
        from qwen_audio import SamplingParams

        self.llm = llm
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=1)

    def __call__(self, requests: list[EvalRequest]) -> list[str]:
        texts: list[str] = [""] * len(requests)
        raw = [i for i, r in enumerate(requests) if not r.chat]
        chat = [i for i, r in enumerate(requests) if r.chat]
        if raw:
            outs = self.llm.generate(
                [requests[i].raw_prompt() for i in raw],
                audios=[[requests[i].audio] for i in raw],
                params=self.params,
            )
            for i, out in zip(raw, outs):
                texts[i] = out.text
        if chat:
            outs = self.llm.chat([requests[i].messages() for i in chat], self.params)
            for i, out in zip(chat, outs):
                texts[i] = out.text
        return texts


class ServerPredictor:
    """Greedy requests to an OpenAI-compatible server, `concurrency` of them in flight.

    Raw prompts go to /v1/completions with the audio in an `audios` extension field; chat
    requests go to /v1/chat/completions with `input_audio` parts. Audio is sent as WAV.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        max_tokens: int = MAX_TOKENS,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        retry: RetryPolicy = RetryPolicy(),
        client=None,
    ):
        import httpx

        self.url = url
        self.client = client or httpx.Client(timeout=timeout_s)
        self.max_tokens = max_tokens
        self.concurrency = max(1, concurrency)
        self.retry = retry
        self.model = model or self._served_model()

    def _served_model(self) -> str:
        """The first model the server lists; an unreachable server or an odd answer is an error
        here, once, rather than a placeholder name that every request would then send."""
        import httpx

        url = endpoint(self.url, "/models")
        try:
            response = self.client.get(url)
            response.raise_for_status()
            return str(response.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(
                f"{url} did not list a model ({type(err).__name__}: {err}); pass --server-model"
            ) from None

    def predict_one(self, request: EvalRequest) -> str:
        audio = {"data": wav_base64(request.audio), "format": "wav"}
        params = {"temperature": 0.0, "max_tokens": self.max_tokens, "min_tokens": 1}
        if request.chat:
            part = {"type": "input_audio", "input_audio": audio}
            payload = {"model": self.model, "messages": request.messages(part), **params}
            reply = post_json(self.client, endpoint(self.url, "/chat/completions"), payload,
                              retry=self.retry)  # fmt: skip
            return str(reply["choices"][0]["message"]["content"] or "")
        payload = {"model": self.model, "prompt": request.raw_prompt(), "audios": [audio], **params}
        reply = post_json(
            self.client, endpoint(self.url, "/completions"), payload, retry=self.retry
        )
        return str(reply["choices"][0]["text"])

    def iter_completed(self, requests: list[EvalRequest]) -> Iterator[tuple[int, str]]:
        """(index, text) pairs in the order the server finishes them."""
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.predict_one, r): i for i, r in enumerate(requests)}
            for future in as_completed(futures):
                yield futures[future], future.result()

    def __call__(self, requests: list[EvalRequest]) -> list[str]:
        texts = [""] * len(requests)
        for i, text in self.iter_completed(requests):
            texts[i] = text
        return texts


def wav_base64(path: str) -> str:
    """The file itself when it is a WAV, else the audio decoded to 16 kHz and written as WAV."""
    if path.lower().endswith(".wav"):
        return base64.b64encode(Path(path).read_bytes()).decode()
    import io

    import soundfile as sf

    try:
        from qwen_audio.audio_io import load_audio
    except ImportError:  # the loader's older home
        from qwen_audio.audio import load_audio

    buf = io.BytesIO()
    sf.write(buf, load_audio(path), 16000, format="WAV", subtype="FLOAT")  # no requantization
    return base64.b64encode(buf.getvalue()).decode()
