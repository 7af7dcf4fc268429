"""One framework's benchmark run, in its own process: `python -m qwen_audio.bench.worker`.

Prints one JSON object with seconds per workload and the peak RSS. Warm-up runs are excluded.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from . import workloads as W


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Ours:
    def __init__(self, model: str, dtype: str, device: str, quantize: str | None) -> None:
        from qwen_audio import LLM, SamplingParams

        self.SamplingParams = SamplingParams
        self.llm = LLM(model, dtype=dtype, device=device, quantize=quantize)

    def params(self, n: int):
        return self.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)

    def run(self, convs: list[list[dict]], new_tokens: int) -> None:
        self.llm.chat(convs, self.params(new_tokens))

    def third_turn(self) -> float:
        for turns in (1, 2):  # the earlier turns, as a chat would have sent them
            self.llm.chat(W.voice_chat(turns), self.params(8))
        start = time.perf_counter()
        self.llm.chat(W.voice_chat(3), self.params(1))
        return time.perf_counter() - start

    def decode_rate(self, conv: list[dict], new_tokens: int) -> float:
        """Tokens per second after the first, from the arrival times of the streamed tokens
        (a difference of two whole-request times drowns in the prefill's noise on a 7B)."""
        times = []
        for delta in self.llm.stream_chat(conv, self.params(new_tokens)):
            times += [time.perf_counter()] * len(delta.token_ids)
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def prefill(self, num_tokens: int) -> float:
        """Seconds to the first token of a text-only prompt of `num_tokens` ids (the workload
        llama-bench's `-p` measures): no audio, no prefix-cache hit."""
        from qwen_audio.prompt import RenderedPrompt

        vocab = self.llm.tokenizer.vocab_size
        ids = [100 + (i * 7919) % max(1, vocab - 200) for i in range(num_tokens)]
        prompt = RenderedPrompt(ids, [], [], None, 0)
        start = time.perf_counter()
        self.llm._run([prompt], self.params(1), False)
        return time.perf_counter() - start

    def weight_bytes_per_token(self) -> int:
        """Bytes of decoder weights read to produce one token (all layers and the head)."""
        lm = self.llm.model.language_model
        total = 0
        for name, t in list(lm.named_parameters()) + list(lm.named_buffers()):
            if "embed_tokens" in name or "inv_freq" in name:
                continue  # a lookup reads one row, not the table
            total += t.numel() * t.element_size()
        return total


def reference_messages(conv: list[dict]) -> tuple[list[dict], list]:
    """Our conversation (audio arrays inline) -> transformers' chat messages and audio list."""
    messages, audios = [], []
    for m in conv:
        if isinstance(m["content"], str):
            messages.append(m)
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "audio":
                parts.append({"type": "audio", "audio_url": "clip"})
                audios.append(p["audio"][0])
            else:
                parts.append(p)
        messages.append({"role": m["role"], "content": parts})
    return messages, audios


class Reference:
    """transformers' Qwen2AudioForConditionalGeneration + processor, as a user would run it."""

    def __init__(self, model: str, dtype: str, device: str) -> None:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(model, dtype=torch_dtype)
        self.model.to(device).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"
        self.device = device

    def _inputs(self, convs: list[list[dict]]):
        texts, audios = [], []
        for conv in convs:
            messages, conv_audios = reference_messages(conv)
            audios += conv_audios
            texts.append(
                self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )
        inputs = self.processor(
            text=texts, audio=audios, sampling_rate=16000, return_tensors="pt", padding=True
        )
        return inputs.to(self.device)

    def run(self, convs: list[list[dict]], new_tokens: int, batch_size: int = 8) -> None:
        for i in range(0, len(convs), batch_size):
            inputs = self._inputs(convs[i : i + batch_size])
            with torch.inference_mode():
                self.model.generate(
                    **inputs,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=self.processor.tokenizer.pad_token_id,
                )

    def third_turn(self) -> float:
        start = time.perf_counter()
        self.run([W.voice_chat(3)], 1)
        return time.perf_counter() - start

    def decode_rate(self, conv: list[dict], new_tokens: int) -> float:
        """Tokens per second after the first, timed by a streamer as tokens come out."""
        times: list[float] = []

        class Timing:  # generate() calls put() with the prompt first, then each new token
            def put(self, value) -> None:
                times.append(time.perf_counter())

            def end(self) -> None:
                pass

        inputs = self._inputs([conv])
        with torch.inference_mode():
            self.model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                streamer=Timing(),
            )
        tokens = times[1:]  # the first put is the prompt
        return (len(tokens) - 1) / max(tokens[-1] - tokens[0], 1e-9)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_all(
    runner,
    workloads: list[str],
    seed: int = 0,
    *,
    repeats: int = 3,
    decode_tokens: int = W.DECODE_TOKENS,
    prompt_tokens: int = 800,
) -> dict:
    out: dict = {}
    runner.run([[W.question_turn(W.clip(2.0, 999))]], 4)  # warm-up, not timed
    if "ttft_5s" in workloads:
        out["ttft_5s"] = min(
            timed(runner.run, [[W.question_turn(W.clip(5.0, seed + i))]], 1) for i in range(repeats)
        )
    if "ttft_30s" in workloads:
        out["ttft_30s"] = min(
            timed(runner.run, [[W.question_turn(W.clip(30.0, seed + 10 + i))]], 1)
            for i in range(max(1, repeats - 1))
        )
    if "decode" in workloads:
        conv = [W.question_turn(W.clip(5.0, seed + 21))]
        out["decode_tok_s"] = runner.decode_rate(conv, decode_tokens)
    if "prefill" in workloads and hasattr(runner, "prefill"):
        out["prefill_tok_s"] = prompt_tokens / runner.prefill(prompt_tokens)
    if "throughput" in workloads:
        convs = [
            [W.question_turn(W.clip(s, seed + 100 + i))]
            for i, s in enumerate(W.throughput_lengths())
        ]
        seconds = timed(runner.run, convs, W.THROUGHPUT_TOKENS)
        out["throughput_tok_s"] = len(convs) * W.THROUGHPUT_TOKENS / seconds
    if "third_turn" in workloads:
        out["ttft_third_turn"] = runner.third_turn()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["ours", "transformers"], required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quantize", default=None)
    p.add_argument("--workloads", default="ttft_5s,ttft_30s,decode,throughput,third_turn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=W.DECODE_TOKENS)
    p.add_argument("--prompt-tokens", type=int, default=800)
    args = p.parse_args(argv)
    workloads = args.workloads.split(",")
    if args.framework == "ours":
        runner = Ours(args.model, args.dtype, args.device, args.quantize)
    else:
        runner = Reference(args.model, args.dtype, args.device)
    result = run_all(
        runner,
        workloads,
        repeats=args.repeats,
        decode_tokens=args.decode_tokens,
        prompt_tokens=args.prompt_tokens,
    )
    if args.framework == "ours":
        result["weight_bytes_per_token"] = runner.weight_bytes_per_token()
        result["precision"] = runner.llm.checkpoint.precision.describe()
        result["kernels"] = runner.llm.checkpoint.kernels
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
