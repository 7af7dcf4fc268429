"""Non-speech sounds with labels, and the room/noise degradation shared with speech (numpy only).

Nine sound classes, each a few seconds at 16 kHz, with a one-line description for the "describe
the sound" task and a short label for the classification eval (``demo_sound``):

    tone         one sine, low (150-280 Hz), mid (350-800 Hz) or high (1.1-2.5 kHz) pitched
    beeps        2-6 short tone bursts                                ("Three short beeps.")
    chord        a major or minor triad of harmonic tones, sustained or plucked
    white noise  flat spectrum; pink noise 1/f power; brown noise 1/f^2 power
    clicks       3-9 short broadband clicks at a steady pace          ("A series of five clicks.")
    siren        a two-tone sweep, slow wail or fast yelp
    silence      nothing but a very faint noise floor

``degrade`` adds what a real recording has: a little silence around the sound, reverberation from
a synthetic room (exponentially decaying noise, RT60 0.15-0.8 s) and background noise of a random
colour at 5-35 dB SNR, then a random level. Every random choice comes from the ``rng`` passed in.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
SOUND_CLASSES = ("tone", "beeps", "chord", "white noise", "pink noise", "brown noise", "clicks",
                 "siren", "silence")  # fmt: skip
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent
SMALL_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                 "fourteen fifteen sixteen seventeen eighteen nineteen").split()  # fmt: skip
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_word(n: int) -> str:
    if n < 20:
        return SMALL_NUMBERS[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens - 2] + (f"-{SMALL_NUMBERS[ones]}" if ones else "")
    raise ValueError(f"{n} is out of range")


def colored_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f**k (white k=0, pink 1, brown 2)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (NOISE_EXPONENTS[colour] / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def fft_convolve(a: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(a) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, size) * np.fft.rfft(h, size), size)[:n]


def room_impulse(rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: a direct path and an exponentially decaying noise tail."""
    rt60 = rng.uniform(0.15, 0.8)  # seconds for the tail to fall by 60 dB
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # the first reflections arrive after ~2 ms
    direct_to_reverb_db = rng.uniform(-3.0, 12.0)
    tail *= 10 ** (-direct_to_reverb_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    tail[0] = 1.0
    return tail


def degrade(
    audio: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = (5.0, 35.0)
) -> np.ndarray:
    """Pad, maybe reverberate, maybe add coloured noise (``snr_db`` range), set a random level."""
    rms = np.sqrt(np.mean(audio**2)) + 1e-9
    lead, trail = (int(rng.uniform(0.05, 0.4) * SAMPLE_RATE) for _ in range(2))
    x = np.concatenate([np.zeros(lead), audio, np.zeros(trail)]).astype(np.float64)
    if rng.random() < 0.5:
        x = fft_convolve(x, room_impulse(rng))[: x.size]
    if rng.random() < 0.8:
        colour = rng.choice(tuple(NOISE_EXPONENTS))
        snr = rng.uniform(*snr_db)
        x += colored_noise(x.size, colour, rng) * rms * 10 ** (-snr / 20)
    return set_peak(x, rng)


def set_peak(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    peak = np.abs(x).max()
    if peak > 0:
        x = x * (10 ** (-rng.uniform(1.0, 12.0) / 20) / peak)
    return x.astype(np.float32)


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(int(seconds * SAMPLE_RATE), x.size // 2)
    ramp = np.linspace(0.0, 1.0, n)
    x[:n] *= ramp
    x[x.size - n :] *= ramp[::-1]
    return x


def _harmonic(freq: float, t: np.ndarray, partials: int = 4) -> np.ndarray:
    return sum(np.sin(2 * np.pi * k * freq * t) / k**1.5 for k in range(1, partials + 1))


def make_sound(label: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(16 kHz float32 audio, description) for one of ``SOUND_CLASSES``."""
    dur = rng.uniform(1.0, 4.0)
    t = np.arange(int(dur * SAMPLE_RATE)) / SAMPLE_RATE
    if label == "tone":
        band, lo, hi = [("low", 150, 280), ("mid", 350, 800), ("high", 1100, 2500)][rng.integers(3)]
        x = _fade(np.sin(2 * np.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 2 * np.pi)))
        desc = f"A steady {band}-pitched tone."
    elif label == "beeps":
        n, f = int(rng.integers(2, 7)), rng.uniform(500, 2000)
        on, off = rng.uniform(0.08, 0.3), rng.uniform(0.1, 0.35)
        beep = _fade(np.sin(2 * np.pi * f * np.arange(int(on * SAMPLE_RATE)) / SAMPLE_RATE))
        gap = np.zeros(int(off * SAMPLE_RATE))
        x = np.concatenate([np.concatenate([beep, gap]) for _ in range(n)])
        desc = f"{number_word(n).capitalize()} short beeps."
    elif label == "chord":
        quality = ("major", "minor")[rng.integers(2)]
        root = rng.uniform(130, 400)
        third = 2 ** ((4 if quality == "major" else 3) / 12)
        x = sum(_harmonic(root * r, t) for r in (1.0, third, 2 ** (7 / 12)))
        plucked = rng.random() < 0.5
        if plucked:
            x = x * np.exp(-t * rng.uniform(1.0, 3.0))
        x = _fade(x)
        desc = (
            f"A {quality} chord{', plucked like a guitar' if plucked else ', held like an organ'}."
        )
    elif label.endswith(" noise"):
        colour = label.split()[0]
        x = _fade(colored_noise(t.size, colour, rng).astype(np.float64))
        desc = {"white": "White noise, a bright steady hiss.",
                "pink": "Pink noise, a soft steady rush like rain.",
                "brown": "Brown noise, a deep steady rumble."}[colour]  # fmt: skip
    elif label == "clicks":
        n, step = int(rng.integers(3, 10)), rng.uniform(0.15, 0.45)
        x = np.zeros(int((n * step + 0.2) * SAMPLE_RATE))
        click = rng.standard_normal(int(0.003 * SAMPLE_RATE)) * np.exp(-np.arange(48) / 8.0)
        for i in range(n):
            start = int((0.1 + i * step) * SAMPLE_RATE)
            x[start : start + click.size] += click
        desc = f"A series of {number_word(n)} clicks."
    elif label == "siren":
        yelp = rng.random() < 0.4
        period = rng.uniform(0.2, 0.4) if yelp else rng.uniform(1.5, 3.0)
        lo, hi = rng.uniform(500, 800), rng.uniform(1100, 1600)
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(lo + (hi - lo) * sweep) / SAMPLE_RATE
        x = _fade(np.sin(phase) + 0.3 * np.sin(2 * phase))
        desc = "A fast yelping siren." if yelp else "A wailing siren, rising and falling."
    elif label == "silence":
        floor_db = rng.uniform(-80.0, -60.0)
        x = colored_noise(t.size, "white", rng) * 10 ** (floor_db / 20)
        return x.astype(np.float32), "Silence. There is no sound."
    else:
        raise ValueError(f"unknown sound class {label!r}; known: {', '.join(SOUND_CLASSES)}")
    if label.endswith(" noise"):  # extra noise would change the colour the label names
        return set_peak(np.concatenate([np.zeros(800), x, np.zeros(800)]), rng), desc
    return degrade(x, rng, snr_db=(15.0, 40.0)), desc
