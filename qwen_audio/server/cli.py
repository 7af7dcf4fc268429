"""`qwen-audio serve`: argument parsing, then AsyncLLM + uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..config import MODEL_HELP
from .settings import ServerSettings

API_KEY_ENV = "QWEN_AUDIO_API_KEY"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_serve_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = ServerSettings()
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server with a web page",
        description="Serve a Qwen2-Audio checkpoint over an OpenAI-compatible HTTP API, with a "
        "voice-chat web page at /.",
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--host", default=d.host, help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: the engine's choice)")
    p.add_argument("--quantize", default=None, choices=["int8", "int4"])
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer KEY` on /v1/* and /metrics (or set {API_KEY_ENV})",
    )
    p.add_argument(
        "--allowed-local-media-path",
        action="append",
        default=[],
        metavar="DIR",
        help="allow file:// audio URLs under DIR (repeatable)",
    )
    p.add_argument(
        "--allow-remote-audio",
        action="store_true",
        help="fetch http(s) audio URLs (public addresses only)",
    )
    p.add_argument(
        "--remote-audio-domains",
        type=_csv,
        default=[],
        metavar="A,B",
        help="with --allow-remote-audio: only these domains and their subdomains",
    )
    p.add_argument("--cors-origins", type=_csv, default=[], metavar="A,B", help="CORS origins")
    p.add_argument(
        "--allowed-hosts",
        type=_csv,
        default=[],
        metavar="A,B",
        help="Host header names answered besides --host (DNS-rebinding protection)",
    )
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb)
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds)
    p.add_argument("--max-audios-per-request", type=int, default=d.max_audios_per_request)
    p.add_argument(
        "--max-audio-samples",
        type=int,
        default=d.max_audio_samples,
        help="channels x frames per audio at its own rate, read from its header before decoding "
        f"and counted while decoding (default {d.max_audio_samples:,}: 1200 s of 48 kHz stereo)",
    )
    p.add_argument("--min-sample-rate", type=int, default=d.min_sample_rate, metavar="HZ")
    p.add_argument("--max-sample-rate", type=int, default=d.max_sample_rate, metavar="HZ")
    p.add_argument(
        "--max-text-chars",
        type=int,
        default=d.max_text_chars,
        help="characters of text per request, checked before tokenizing "
        "(default: 16 x the model's context in tokens)",
    )
    p.add_argument("--max-messages", type=int, default=d.max_messages, help="per chat request")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="S")
    p.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout_s,
        metavar="S",
        help="a request's headers, and each piece of its body, must arrive within S seconds",
    )
    p.add_argument(
        "--min-body-rate",
        type=float,
        default=d.min_body_rate / 1024,
        metavar="KB/S",
        help="a body must average at least this after its first --read-timeout seconds",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=d.keep_alive_timeout_s,
        metavar="S",
        help="close a connection idle this long between requests",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="connections served at once; requests on more get 503",
    )
    p.add_argument(
        "--prepare-workers",
        type=int,
        default=d.prepare_workers,
        metavar="N",
        help="requests that decode audio, extract features or tokenize at once, off the event "
        "loop (default: half the cores, 1 to 4)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help="requests waiting for the engine beyond which the server answers 429",
    )
    p.add_argument(
        "--asr-style",
        default=d.asr_style,
        choices=["auto", "chat", "base"],
        help="transcription prompts: chat (Instruct), base (raw ASR prompt) or auto (from the "
        "checkpoint's chat template and generation config)",
    )
    p.add_argument(
        "--asr-segmentation",
        default=d.asr_segmentation,
        choices=["vad", "fixed"],
        help="how transcriptions cut a file: vad (at pauses, default) or fixed (30 s windows); "
        "a request's `segmentation` form field overrides it",
    )
    p.add_argument(
        "--asr-max-segment-seconds",
        type=_max_segment_seconds,
        default=d.asr_max_segment_seconds,
        help="longest transcription segment with vad segmentation (at most 30)",
    )
    p.add_argument(
        "--realtime-max-sessions",
        type=int,
        default=d.realtime_max_sessions,
        help="realtime transcription sessions (/v1/realtime) at once",
    )
    p.add_argument(
        "--realtime-max-event-kb",
        type=float,
        default=d.realtime_max_event_kb,
        metavar="KB",
        help="largest realtime client event (an append of base64 audio)",
    )
    p.add_argument(
        "--realtime-max-utterance-seconds",
        type=_max_segment_seconds,
        default=d.realtime_max_utterance_seconds,
        metavar="S",
        help="a realtime utterance this long is cut and transcribed (at most 30)",
    )
    p.add_argument(
        "--realtime-max-pending",
        type=int,
        default=d.realtime_max_pending,
        metavar="N",
        help="transcriptions of one realtime session running at once",
    )
    p.add_argument(
        "--realtime-idle-timeout",
        type=float,
        default=d.realtime_idle_timeout_s,
        metavar="S",
        help="close a realtime session that sends no event this long",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=serve)
    return p


def _max_segment_seconds(text: str) -> float:
    from ..asr.segment import max_segment_seconds

    return max_segment_seconds(text)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        cors_origins=args.cors_origins,
        allowed_hosts=args.allowed_hosts,
        allowed_local_media_paths=[Path(p) for p in args.allowed_local_media_path],
        allow_remote_audio=args.allow_remote_audio,
        remote_audio_domains=args.remote_audio_domains,
        max_upload_mb=args.max_upload_mb,
        max_audio_seconds=args.max_audio_seconds,
        max_audios_per_request=args.max_audios_per_request,
        request_timeout_s=args.request_timeout,
        max_queue=args.max_queue,
        asr_style=args.asr_style,
        asr_segmentation=args.asr_segmentation,
        asr_max_segment_seconds=args.asr_max_segment_seconds,
        max_text_chars=args.max_text_chars,
        max_messages=args.max_messages,
        max_audio_samples=args.max_audio_samples,
        min_sample_rate=args.min_sample_rate,
        max_sample_rate=args.max_sample_rate,
        read_timeout_s=args.read_timeout,
        min_body_rate=args.min_body_rate * 1024,
        keep_alive_timeout_s=args.keep_alive_timeout,
        max_connections=args.max_connections,
        prepare_workers=args.prepare_workers,
        realtime_max_sessions=args.realtime_max_sessions,
        realtime_max_event_kb=args.realtime_max_event_kb,
        realtime_max_utterance_seconds=args.realtime_max_utterance_seconds,
        realtime_max_pending=args.realtime_max_pending,
        realtime_idle_timeout_s=args.realtime_idle_timeout,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from qwen_audio import AsyncLLM

    from .app import create_app
    from .connections import uvicorn_config

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    if not _is_loopback(settings.host) and not settings.api_key:
        print(
            f"warning: listening on {settings.host} without an API key; anyone who can reach "
            f"this port can use the model (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
        )
    kwargs = {"dtype": args.dtype, "quantize": args.quantize}
    if args.device:
        kwargs["device"] = args.device
    engine = AsyncLLM(args.model, prepare_workers=settings.prepare_workers, **kwargs)
    try:  # the engine's thread stops whatever fails from here on, building the app included
        app = create_app(engine, settings)
        uvicorn.Server(uvicorn_config(app, settings, log_level=args.log_level.lower())).run()
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m qwen_audio.server.cli serve ...`, the same as `qwen-audio serve ...`."""
    parser = argparse.ArgumentParser(prog="qwen-audio")
    add_serve_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
