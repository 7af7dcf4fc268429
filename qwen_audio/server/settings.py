"""Every option of `qwen-audio serve` in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MB = 1024 * 1024


@dataclass
class ServerSettings:
    # Network and access
    host: str = "127.0.0.1"  # loopback only unless the user asks for more
    port: int = 8000
    api_key: str | None = None  # when set, /v1/* and /metrics need `Authorization: Bearer <key>`
    cors_origins: list[str] = field(default_factory=list)  # empty: no CORS headers at all
    # Host header values answered besides --host itself (and the loopback names when --host is
    # loopback); with a wildcard --host and none given, any Host is answered.
    allowed_hosts: list[str] = field(default_factory=list)

    # Media inputs
    allowed_local_media_paths: list[Path] = field(default_factory=list)  # file:// roots
    allow_remote_audio: bool = False  # http(s) audio_url fetching is off by default
    remote_audio_domains: list[str] = field(default_factory=list)  # empty: any public host
    max_upload_mb: float = 25.0  # audio bytes per request (uploads, base64 payloads, downloads)
    max_audio_seconds: float = 1200.0  # per decoded audio
    # Per audio, read from its header before decoding and counted while decoding: channels x
    # frames at the file's own rate (the decoding work; 1200 s of 48 kHz stereo), and the range
    # of sample rates (resampling 1 Hz audio to 16 kHz would multiply it by 16,000).
    max_audio_samples: int = 115_200_000
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    max_audios_per_request: int = 8
    remote_timeout_s: float = 10.0  # whole download, redirects included
    max_redirects: int = 3

    # Text limits, checked before tokenizing (see limits.py)
    max_text_chars: int | None = None  # all text of a request; None: 16 x the context in tokens
    max_messages: int = 512  # messages of a chat request

    # Connection time limits (connections.py): a request's head, and each piece of its body,
    # within read_timeout_s; the body at >= min_body_rate bytes/s on average after that long.
    read_timeout_s: float = 30.0
    min_body_rate: float = 32 * 1024
    keep_alive_timeout_s: float = 5.0  # an idle connection between requests
    max_connections: int = 512  # served at once; requests on more get a 503

    # CPU-heavy request preparation (decoding, resampling, features, tokenizing) at once, on the
    # engine's bounded pool; None: half the cores, 1 to 4 (AsyncLLM's default_prepare_workers)
    prepare_workers: int | None = None

    # Load and time limits
    request_timeout_s: float = 600.0  # whole request, from admission to the last token
    max_queue: int = 64  # admitted requests not yet running in the engine; more get 429
    retry_after_s: int = 1  # the Retry-After header of a 429

    # Generation defaults the OpenAI API leaves to the server
    default_max_tokens: int = 1024  # chat completions without max_tokens
    default_completion_max_tokens: int = 16  # /v1/completions, as OpenAI's documented default
    transcription_max_tokens: int = 448  # per 30 s window, Whisper's decoder limit
    # How transcription/translation prompts are written: "chat" (Instruct), "base" (raw ASR
    # prompt) or "auto" (from the checkpoint: `qwen_audio.asr.detect_style`).
    asr_style: str = "auto"
    # How a file is cut: "vad" (at pauses, segments of at most asr_max_segment_seconds, no
    # segment for silence) or "fixed" (30 s windows); a request's `segmentation` field overrides.
    asr_segmentation: str = "vad"
    asr_max_segment_seconds: float = 20.0

    # Realtime transcription sessions (/v1/realtime, realtime.py)
    realtime_max_sessions: int = 16  # websocket sessions at once; more get an error and a close
    # One client event: 2 MiB of base64 is 1.5 MB of pcm16, 32 s at 24 kHz.
    realtime_max_event_kb: float = 2048.0
    # An utterance this long is cut (at its quietest 100 ms in the second half) and transcribed,
    # and so is a client-committed buffer without turn detection: at most 30, the encoder's span.
    realtime_max_utterance_seconds: float = 20.0
    realtime_max_pending: int = 4  # transcriptions of one session in the engine at once
    realtime_idle_timeout_s: float = 60.0  # a session with no client event this long is closed

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def realtime_max_event_bytes(self) -> int:
        return int(self.realtime_max_event_kb * 1024)

    @property
    def max_body_bytes(self) -> int:
        # A JSON body carries audio as base64 (4 bytes per 3), plus room for the text fields.
        return self.max_upload_bytes * 4 // 3 + MB
