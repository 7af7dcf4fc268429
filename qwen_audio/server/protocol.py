"""Request and response models of the OpenAI-compatible API (the shapes the `openai` client uses).

Extensions beyond OpenAI's fields are marked "extension" below. Unknown request fields are
ignored, as OpenAI-compatible servers commonly do, except where ignoring them would change the
answer silently (`n` other than 1).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP_STRINGS = 16


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def sse(payload: BaseModel | dict) -> str:
    """One server-sent event."""
    body = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {body}\n\n"


# ---------------------------------------------------------------------------------------------
# Requests


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(Request):
    type: Literal["text"]
    text: str


class InputAudio(Request):
    data: str  # base64 (a data: URL is accepted too)
    format: str = "wav"  # a hint only: the decoder reads the container from the bytes


class InputAudioPart(Request):
    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(Request):
    url: str  # data:, file:// (allow-listed roots) or http(s) (with --allow-remote-audio)


class AudioURLPart(Request):
    type: Literal["audio_url"]
    audio_url: AudioURL


ContentPart = Annotated[TextPart | InputAudioPart | AudioURLPart, Field(discriminator="type")]


# Validating JSON holds the GIL and costs in proportion to the items (100,000 messages: 0.2 s in
# which no other request moves), so lists are bounded where they are parsed: pydantic stops at
# the first item past max_length. The server's options (--max-messages,
# --max-audios-per-request) are checked after, within these.
MAX_MESSAGES = 1024  # messages of a chat request
MAX_PARTS = 32  # content parts of one message
MAX_AUDIO_ITEMS = 64  # `audios` of a completion


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)] | None = None
    name: str | None = None


class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    """Fields shared by chat and text completions."""

    model: str | None = None  # any name is accepted; responses carry the served model's name
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch generators take
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extensions
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    min_tokens: int | None = Field(None, ge=0)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str] | None:
        if stop is None:
            return None
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(s == "" for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop

    def sampling_fields(self) -> dict:
        names = (
            "temperature",
            "top_p",
            "top_k",
            "min_tokens",
            "seed",
            "repetition_penalty",
            "stop",
        )
        return {name: getattr(self, name) for name in names}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # wins over max_tokens


class CompletionAudio(Request):
    """Extension: one audio of a raw prompt, in the order of its `<|AUDIO|>` placeholders."""

    data: str | None = None  # base64
    format: str = "wav"
    url: str | None = None  # instead of data; same rules as a chat `audio_url`


class CompletionRequest(SamplingFields):
    # A raw base-model prompt, e.g. "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption
    # in English:". A list is accepted when it holds exactly one prompt.
    prompt: str | list[str]
    max_tokens: int | None = Field(None, ge=1)
    audios: list[CompletionAudio] = Field(default_factory=list, max_length=MAX_AUDIO_ITEMS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("exactly one prompt per request is supported")
            prompt = prompt[0]
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo


TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


# ---------------------------------------------------------------------------------------------
# Responses


class Response(BaseModel):
    pass


class PromptTokensDetails(Response):
    audio_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the engine's prefix cache


class Usage(Response):
    prompt_tokens: int = 0  # includes the audio tokens
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, prompt: int, audio: int, completion: int, cached: int = 0) -> Usage:
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(audio_tokens=audio, cached_tokens=cached),
        )


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Response):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Response):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(Response):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(Response):
    """Both the whole answer and each streamed chunk (OpenAI uses one shape for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class InputTokenDetails(Response):
    audio_tokens: int = 0
    text_tokens: int = 0


class TranscriptionUsage(Response):
    type: Literal["tokens"] = "tokens"
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_token_details: InputTokenDetails = Field(default_factory=InputTokenDetails)


class Segment(Response):
    id: int
    seek: int  # start of the window in 10 ms frames, as Whisper counts
    start: float  # seconds
    end: float
    text: str
    tokens: list[int]
    temperature: float
    compression_ratio: float  # len(text) / len(zlib(text)), Whisper's repetition check
    avg_logprob: float | None = None  # not computed by this server
    no_speech_prob: float | None = None  # not computed by this server


class Transcription(Response):
    text: str
    usage: TranscriptionUsage


class DurationUsage(Response):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionVerbose(Response):
    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[Segment]
    usage: DurationUsage  # OpenAI's verbose shape bills by duration


class TranscriptDelta(Response):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptDone(Response):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: TranscriptionUsage


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen-audio"
    max_model_len: int | None = None


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Response):
    error: ErrorBody


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code or ("invalid_value" if status == 400 else None)
        self.headers = headers

    def body(self) -> dict:
        error = ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=error).model_dump()
