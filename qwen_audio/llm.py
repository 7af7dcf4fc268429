"""`LLM`: the synchronous Python API (chat, raw prompts, streaming) over the engine."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .engine.engine import EngineConfig, LLMEngine
from .engine.sequence import EngineRequest
from .loading import Checkpoint, default_model_path, load_checkpoint
from .outputs import Delta, OutputBuilder, RequestOutput
from .prompt import RenderedPrompt
from .sampling import SamplingParams

__all__ = ["LLM", "Checkpoint", "default_model_path", "load_checkpoint", "build_request"]

_request_ids = itertools.count()


def build_request(
    checkpoint: Checkpoint,
    prompt: RenderedPrompt,
    params: SamplingParams | None,
    request_id: str | None = None,
) -> tuple[EngineRequest, OutputBuilder]:
    """The engine's view of a rendered prompt, and the builder that turns its ids into text."""
    resolved = (params or SamplingParams()).resolve(checkpoint.generation)
    rid = request_id or f"req-{next(_request_ids)}"
    req = EngineRequest(rid, prompt.token_ids, prompt.audio_clips, prompt.audio_hashes, resolved)
    builder = OutputBuilder(
        rid,
        checkpoint.tokenizer,
        resolved.stop,
        resolved.skip_special_tokens,
        audio_tokens=prompt.num_audio_tokens,
    )
    return req, builder


def is_conversation(obj: Any) -> bool:
    """A conversation is a list of message dicts; a batch is a list of conversations."""
    return isinstance(obj, list) and (not obj or isinstance(obj[0], dict))


class EngineFrontend:
    """What `LLM` and `AsyncLLM` share: the checkpoint, its prompt renderer and the engine."""

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str = "cpu",
        quantize: str | None = None,
        adapter: str | os.PathLike | None = None,
        long_audio: str = "split",
        allow_remote_audio: bool = False,
        allow_download: bool = False,
        engine_config: EngineConfig | None = None,
    ) -> None:
        self.checkpoint = load_checkpoint(
            model,
            dtype=dtype,
            device=device,
            quantize=quantize,
            adapter=adapter,
            long_audio=long_audio,
            allow_remote_audio=allow_remote_audio,
            allow_download=allow_download,
        )
        self.tokenizer = self.checkpoint.tokenizer
        self.renderer = self.checkpoint.renderer
        self.model = self.checkpoint.model
        self.engine = LLMEngine(self.model, self.checkpoint.eos_token_ids, engine_config)

    @property
    def model_name(self) -> str:
        return self.checkpoint.path.name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def make_request(
        self, prompt: RenderedPrompt, params: SamplingParams | None, request_id: str | None = None
    ) -> tuple[EngineRequest, OutputBuilder]:
        return build_request(self.checkpoint, prompt, params, request_id)


class LLM(EngineFrontend):
    """Load a Qwen2-Audio checkpoint and generate.

    >>> llm = LLM("path/to/Qwen2-Audio-7B-Instruct", dtype="bfloat16")
    >>> llm.chat([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}])[0].text

    Options: dtype auto|float32|bfloat16|float16 (the weights' precision; on CPUs without
    native bf16 the activations run in float32), device cpu|cuda, quantize None|"int8"|"int4",
    adapter (a PEFT LoRA folder to merge), long_audio split|truncate|error, engine_config.
    """

    # ---- batch APIs ----------------------------------------------------------------------
    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | None = None,
        *,
        add_generation_prompt: bool = True,
        use_tqdm: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[RequestOutput]:
        """Answer one conversation or a list of them; one result per conversation, in order.
        `on_done(i)` is called as the i-th one finishes (they finish in any order)."""
        batch = [conversations] if is_conversation(conversations) else list(conversations)
        prompts = [
            self.renderer.render_chat(c, add_generation_prompt=add_generation_prompt) for c in batch
        ]
        return self._run(prompts, params, use_tqdm, on_done)

    def generate(
        self,
        prompts: str | Sequence[str],
        params: SamplingParams | None = None,
        *,
        audios: list | None = None,
        use_tqdm: bool = False,
        on_done: Callable[[int], None] | None = None,
    ) -> list[RequestOutput]:
        """Raw (base-model) prompts with `<|audio_bos|><|AUDIO|><|audio_eos|>` placeholders.

        `audios`: for one prompt, the list of its audios; for a list of prompts, one list each.
        `on_done(i)` is called as the i-th prompt finishes.
        """
        if isinstance(prompts, str):
            prompts, audios = [prompts], [audios or []]
        audios = audios if audios is not None else [[] for _ in prompts]
        if len(audios) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(audios)} audio lists")
        rendered = [self.renderer.render_raw(p, list(a)) for p, a in zip(prompts, audios)]
        return self._run(rendered, params, use_tqdm, on_done)

    # ---- streaming -----------------------------------------------------------------------
    def stream_chat(
        self, conversation: list[dict], params: SamplingParams | None = None
    ) -> Iterator[Delta]:
        yield from self._stream(self.renderer.render_chat(conversation), params)

    def stream_generate(
        self, prompt: str, params: SamplingParams | None = None, *, audios: list | None = None
    ) -> Iterator[Delta]:
        yield from self._stream(self.renderer.render_raw(prompt, list(audios or [])), params)

    # ---- internals -----------------------------------------------------------------------
    def _run(
        self,
        prompts: list[RenderedPrompt],
        params: SamplingParams | None,
        use_tqdm: bool,
        on_done: Callable[[int], None] | None = None,
    ) -> list[RequestOutput]:
        builders: dict[str, OutputBuilder] = {}
        order = []
        for p in prompts:
            req, builder = self.make_request(p, params)
            self.engine.add_request(req)
            builders[req.request_id] = builder
            order.append(req.request_id)
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(order), desc="generating")
        remaining = set(order)
        index = {rid: i for i, rid in enumerate(order)}
        try:
            while remaining:
                for out in self.engine.step():
                    b = builders.get(out.request_id)
                    if b is None or b.finished:
                        continue
                    b.push(out)
                    if b.finished:
                        remaining.discard(out.request_id)
                        if not out.finished:  # a stop string ended it before the engine did
                            self.engine.abort(out.request_id)
                        if bar is not None:
                            bar.update(1)
                        if on_done is not None:
                            on_done(index[out.request_id])
        except BaseException:
            for rid in remaining:
                self.engine.abort(rid)
            self.engine.step()
            raise
        finally:
            if bar is not None:
                bar.close()
        return [builders[rid].result() for rid in order]

    def _stream(self, prompt: RenderedPrompt, params: SamplingParams | None) -> Iterator[Delta]:
        req, builder = self.make_request(prompt, params)
        self.engine.add_request(req)
        try:
            while not builder.finished:
                for out in self.engine.step():
                    if out.request_id != req.request_id or builder.finished:
                        continue
                    delta = builder.push(out)
                    if builder.finished and not out.finished:
                        self.engine.abort(req.request_id)
                    if delta.text or delta.finish_reason or delta.token_ids:
                        yield delta
        finally:
            if not builder.finished:
                self.engine.abort(req.request_id)
                self.engine.step()
