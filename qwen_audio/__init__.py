"""qwen-audio: a fast, complete toolkit for the Qwen2-Audio audio-language model."""

__version__ = "0.1.0"
