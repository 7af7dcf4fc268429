"""Live audio in, utterances out: the input audio buffer of a realtime transcription session.

Audio arrives as raw PCM16 (little-endian, mono) at 24 kHz, as OpenAI's Realtime API sends it,
in pieces of any size. It is scaled to float32 the way the file loader reads a 16-bit WAV
(x / 32768) and resampled to 16 kHz with soxr's streaming resampler at the loader's quality, so a
committed buffer is the same samples as the same audio uploaded as a 24 kHz WAV file.

Turn detection (OpenAI's `server_vad`) is the energy detector of `segment.py` run frame by
frame: every 10 ms frame's level in dBFS (`segment.frame_levels`) is speech when it is above
max(gate, noise floor + margin), where `threshold` (0..1, default 0.5) sets
gate = -60 + 20 x threshold dBFS (-50 at 0.5) and margin = 10 + 10 x threshold dB (15 at 0.5).
The noise floor follows quieter frames at once and rises by at most 5 dB/s during non-speech, so a
steady hum is not speech and a louder room raises the bar slowly. Speech starts after
`MIN_SPEECH_MS` of speech frames; the utterance then begins `prefix_padding_ms` earlier. It stops
after `silence_duration_ms` without speech; the utterance ends `TRAIL_MS` after its last speech
frame. An utterance that reaches `max_seconds` is cut at its quietest 100 ms in the second half of
that length and goes on as a new one: nothing is truncated, and memory stays bounded.

Without turn detection the client commits; a buffer that reaches `max_seconds` is committed by the
buffer itself (`reason="max_length"`), for the same reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from .segment import FRAME, SAMPLE_RATE, WINDOW_SECONDS, frame_levels

INPUT_RATE = 24000  # OpenAI Realtime's pcm16 rate
MS = SAMPLE_RATE // 1000  # 16 samples per millisecond at 16 kHz
MIN_COMMIT_MS = 100  # OpenAI's smallest committable buffer
MIN_SPEECH_MS = 100  # speech frames in a row before speech_started: a click is not speech
TRAIL_MS = 200  # audio kept after the last speech frame of an utterance
FLOOR_RISE_DB = 0.05  # per non-speech frame: 5 dB/s
PIECE = SAMPLE_RATE  # appended audio is analysed 1 s at a time, so cuts bound the buffer


@dataclass(frozen=True)
class TurnDetection:
    """OpenAI's server_vad settings."""

    threshold: float = 0.5  # 0..1: higher needs louder speech
    prefix_padding_ms: int = 300  # audio kept before the detected start
    silence_duration_ms: int = 500  # silence that ends an utterance

    @property
    def gate_db(self) -> float:
        return -60.0 + 20.0 * self.threshold

    @property
    def margin_db(self) -> float:
        return 10.0 + 10.0 * self.threshold


@dataclass(frozen=True)
class SpeechStarted:
    start_ms: int  # where the utterance begins (prefix padding included), on the session's clock


@dataclass(frozen=True)
class SpeechStopped:
    end_ms: int  # where speech was found to have stopped (or the utterance was cut)


@dataclass(frozen=True)
class Utterance:
    samples: np.ndarray  # float32 at 16 kHz
    start_ms: int
    end_ms: int
    reason: str  # "vad" (a pause), "commit" (the client), "max_length" (cut at the limit)


Event = SpeechStarted | SpeechStopped | Utterance


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Little-endian 16-bit samples -> float32 in [-1, 1), as libsndfile reads a PCM_16 WAV."""
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def to_ms(samples: int) -> int:
    return samples // MS


class LiveBuffer:
    """The audio of one session since its last commit, with optional turn detection.

    Positions are sample indices at 16 kHz on the session's clock (all audio appended so far),
    so event times keep counting across commits and clears.
    """

    def __init__(self, turn: TurnDetection | None = None, max_seconds: float = 20.0):
        if not 1.0 < max_seconds <= WINDOW_SECONDS:
            raise ValueError(f"max_seconds must be in (1, {WINDOW_SECONDS}]")
        self.turn = turn
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.total = 0  # samples appended so far (16 kHz)
        self._reset_audio()

    def _reset_audio(self) -> None:
        self.resampler = soxr.ResampleStream(
            INPUT_RATE, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        self.audio = np.zeros(0, np.float32)  # samples [start, total)
        self.start = self.total
        self.analysed = self.total  # frames before this were classified (VAD)
        self.floor: float | None = None
        self.run = 0  # speech frames in a row (idle)
        self.silence = 0  # non-speech frames in a row (in speech)
        self.speaking = False
        self.utt_start = 0  # where the current utterance begins (in speech)
        self.last_speech = 0  # end of its last speech frame
        self.levels: list[float] = []  # of the current utterance's frames, for cuts

    # -- public ---------------------------------------------------------------------------

    def configure(self, turn: TurnDetection | None) -> list[Event]:
        """New turn-detection settings. Switching detection off or on mid-speech commits the
        speech so far, so no audio changes hands between the two modes half-analysed."""
        events: list[Event] = []
        if (turn is None) != (self.turn is None) and self.speaking:
            events = self._stop(self.total, "commit")
        self.turn = turn
        if turn is not None:
            self._drop_before(max(self.start, self.total - turn.prefix_padding_ms * MS))
            self.analysed = max(self.analysed, self.start)
        return events

    def append(self, pcm16: bytes) -> list[Event]:
        """Appends raw 24 kHz PCM16; returns what happened, in order."""
        samples = self.resampler.resample_chunk(pcm16_to_float(pcm16))
        events: list[Event] = []
        for i in range(0, len(samples), PIECE):
            events += self._add(samples[i : i + PIECE])
        return events

    def commit(self) -> list[Event]:
        """The client's commit: everything buffered (with detection: the speech so far) becomes
        an utterance. Raises ValueError when there is nothing to commit."""
        events = self._add(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self.resampler = soxr.ResampleStream(
            INPUT_RATE, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
        )
        if self.turn is not None:
            if not self.speaking:
                if any(isinstance(e, Utterance) for e in events):
                    return events
                raise ValueError("the buffer holds no speech since the last utterance")
            return events + self._stop(self.total, "commit")
        if self.total - self.start < MIN_COMMIT_MS * MS:
            have = (self.total - self.start) / MS
            raise ValueError(
                f"buffer too small: at least {MIN_COMMIT_MS} ms of audio is needed, "
                f"it holds {have:.2f} ms"
            )
        return events + [self._take(self.start, self.total, "commit")]

    def clear(self) -> None:
        self._reset_audio()

    @property
    def buffered_samples(self) -> int:
        return len(self.audio)

    # -- internals ------------------------------------------------------------------------

    def _add(self, samples: np.ndarray) -> list[Event]:
        self.audio = np.concatenate([self.audio, samples]) if len(self.audio) else samples
        self.total += len(samples)
        if self.turn is None:
            events: list[Event] = []
            while self.total - self.start >= self.max_samples:
                events.append(self._take(self.start, self.start + self.max_samples, "max_length"))
            return events
        return self._detect()

    def _detect(self) -> list[Event]:
        turn = self.turn
        assert turn is not None
        n = (self.total - self.analysed) // FRAME
        if n == 0:
            return []
        a = self.analysed - self.start
        levels = frame_levels(self.audio[a : a + n * FRAME])
        events: list[Event] = []
        min_run = MIN_SPEECH_MS * MS // FRAME
        for level in levels.tolist():
            frame_end = self.analysed + FRAME
            floor = level if self.floor is None else min(self.floor, level)
            speech = level > max(turn.gate_db, floor + turn.margin_db)
            self.floor = floor if speech else min(floor + FLOOR_RISE_DB, level)
            self.analysed = frame_end
            if not self.speaking:
                self.run = self.run + 1 if speech else 0
                if self.run >= min_run:
                    begin = frame_end - self.run * FRAME
                    self.utt_start = max(self.start, begin - turn.prefix_padding_ms * MS)
                    self.speaking, self.silence, self.last_speech = True, 0, frame_end
                    self.levels = []
                    events.append(SpeechStarted(to_ms(self.utt_start)))
                continue
            self.levels.append(level)
            if speech:
                self.silence, self.last_speech = 0, frame_end
            else:
                self.silence += 1
            if self.silence * FRAME >= turn.silence_duration_ms * MS:
                end = min(self.last_speech + TRAIL_MS * MS, frame_end)
                events += self._stop(end, "vad", stopped_at=frame_end)
            elif frame_end - self.utt_start >= self.max_samples:
                events += self._cut()
        if not self.speaking:  # idle: keep only what a start could reach back to
            keep = self.analysed - turn.prefix_padding_ms * MS - self.run * FRAME
            self._drop_before(max(self.start, keep))
        return events

    def _cut(self) -> list[Event]:
        """An utterance at the length limit ends at its quietest 100 ms in the second half and
        the speech goes on as a new utterance from there."""
        first = self.analysed - len(self.levels) * FRAME  # where self.levels begins
        smooth = np.convolve(self.levels, np.ones(10) / 10, mode="same")
        lo = max(0, (self.utt_start + self.max_samples // 2 - first) // FRAME)
        lo = min(lo, len(self.levels) - 1)
        cut = first + (lo + int(np.argmin(smooth[lo:]))) * FRAME
        cut = max(cut, self.utt_start + MIN_COMMIT_MS * MS)
        events: list[Event] = [
            SpeechStopped(to_ms(cut)),
            self._take(self.utt_start, cut, "max_length"),
        ]
        self.levels = self.levels[(cut - first) // FRAME :]
        self.utt_start = cut
        events.append(SpeechStarted(to_ms(cut)))
        return events

    def _stop(self, end: int, reason: str, stopped_at: int | None = None) -> list[Event]:
        events: list[Event] = [SpeechStopped(to_ms(end if stopped_at is None else stopped_at))]
        events.append(self._take(self.utt_start, end, reason))
        self.speaking, self.run, self.silence, self.levels = False, 0, 0, []
        return events

    def _take(self, a: int, b: int, reason: str) -> Utterance:
        """Samples [a, b) as an utterance; everything before b leaves the buffer."""
        samples = self.audio[a - self.start : b - self.start].copy()
        self._drop_before(b)
        return Utterance(samples, to_ms(a), to_ms(b), reason)

    def _drop_before(self, position: int) -> None:
        if position > self.start:
            self.audio = self.audio[position - self.start :]
            self.start = position
