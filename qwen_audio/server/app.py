"""FastAPI routes (thin: each calls one handler) and `create_app(engine, settings)`."""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .connections import BodyTimedOut, BodyTimeout
from .engine_calls import ClientGone
from .handlers import Handlers
from .limits import too_many_messages
from .protocol import MAX_MESSAGES, APIError, ChatCompletionRequest, CompletionRequest
from .realtime import Realtime
from .settings import ServerSettings
from .transcription import AudioForm

log = logging.getLogger("qwen_audio.server")
STATIC = Path(__file__).parent / "static"
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/audio/translations": "translations",
    "/v1/realtime": "realtime",
    "/v1/models": "models",
    "/health": "health",
    "/metrics": "metrics",
    "/": "page",
}
# The page loads nothing from elsewhere; recorded audio plays from blob: URLs.
PAGE_CSP = (
    "default-src 'self'; media-src 'self' blob: data:; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def endpoint_of(path: str) -> str:
    if path.startswith("/static/"):
        return "static"
    if path.startswith("/v1/models/"):
        return "models"
    return ENDPOINTS.get(path, "other")


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses request bodies over `max_bytes`: at once when Content-Length says so, otherwise
    while the body arrives (chunked uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(body_too_large(self.max_bytes).body(), status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


def body_too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"request body is larger than the limit of {max_bytes / 2**20:.1f} MB",
        code="request_too_large",
    )


def body_timed_out(settings: ServerSettings) -> APIError:
    return APIError(
        408,
        f"the request body stopped arriving or came too slowly (each piece within "
        f"{settings.read_timeout_s:g} s, --read-timeout; on average at least "
        f"{settings.min_body_rate / 1024:g} KB/s, --min-body-rate)",
        code="request_timeout",
        headers={"Connection": "close"},
    )


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def allowed_host_names(settings: ServerSettings) -> set[str] | None:
    """The Host header values this server answers (port aside); None: any (a wildcard bind with
    no --allowed-hosts, where the names it is reached by are unknown)."""
    names = {h.lower() for h in settings.allowed_hosts}
    bound = settings.host.lower()
    if bound in WILDCARD_HOSTS:
        return names or None
    names.add(bound)
    if bound in LOOPBACK_NAMES or bound.startswith("127."):
        names |= LOOPBACK_NAMES
    return names


def host_name(header: str) -> str:
    """`example.com:8000` -> `example.com`; `[::1]:8000` -> `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how OpenAI's browser client sends a key


def bearer_token(headers: dict[bytes, bytes], websocket: bool) -> str | None:
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    if websocket:  # a browser cannot set headers on a websocket; it offers a subprotocol
        offered = headers.get(b"sec-websocket-protocol", b"").decode("latin-1").split(",")
        for protocol in (p.strip() for p in offered):
            if protocol.startswith(KEY_SUBPROTOCOL):
                return protocol[len(KEY_SUBPROTOCOL) :]
    return None


class Gatekeeper:
    """What is decided before a request's body is read: the Host header (a page that rebinds its
    DNS name to 127.0.0.1 must not reach a local server), and the API key of the protected paths
    (an unauthenticated body is never parsed); then the security headers of every answer.
    Websockets get the same checks, and one more: browsers let any page open a websocket to any
    server (CORS does not apply), so one from a page of another origin is refused unless that
    origin is in --cors-origins."""

    PROTECTED = ("/v1/", "/metrics", "/openapi.json")

    def __init__(self, app: ASGIApp, settings: ServerSettings):
        self.app = app
        self.settings = settings
        self.hosts = allowed_host_names(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = dict(scope["headers"])
            err = self._refusal(scope["path"], headers, websocket=True) or self._cross_origin(
                headers
            )
            if err is not None:
                return await deny_websocket(err, scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        err = self._refusal(scope["path"], headers)
        if err is not None:
            response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
            return await response(scope, receive, self._with_security_headers(send, scope))
        await self.app(scope, receive, self._with_security_headers(send, scope))

    def _cross_origin(self, headers: dict[bytes, bytes]) -> APIError | None:
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:  # not a browser
            return None
        allowed = self.settings.cors_origins
        same = origin.split("://", 1)[-1].lower() == headers.get(b"host", b"").decode().lower()
        if same or origin in allowed or "*" in allowed:
            return None
        return APIError(
            403,
            f"a websocket from a page of {origin!r} is refused: not this server's origin nor in "
            "--cors-origins",
            code="origin_not_allowed",
        )

    def _refusal(
        self, path: str, headers: dict[bytes, bytes], websocket: bool = False
    ) -> APIError | None:
        if self.hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.hosts:
                return APIError(
                    421,
                    f"Host {host!r} is not a name this server answers to (--host, --allowed-hosts)",
                    code="host_not_allowed",
                )
        if self.settings.api_key is not None and path.startswith(self.PROTECTED):
            token = bearer_token(headers, websocket)
            if token is None or not secrets.compare_digest(
                token.encode("latin-1"), self.settings.api_key.encode()
            ):
                return APIError(
                    401,
                    "missing or wrong API key (send `Authorization: Bearer <key>`)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None

    @staticmethod
    def _with_security_headers(send: Send, scope: Scope) -> Send:
        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff")]
                if page:
                    extra.append((b"content-security-policy", PAGE_CSP.encode()))
                known = {k.lower() for k, _ in message.get("headers", [])}
                message = {
                    **message,
                    "headers": list(message.get("headers", []))
                    + [h for h in extra if h[0] not in known],
                }
            await send(message)

        return wrapped


async def deny_websocket(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuses a websocket handshake with the error's status and JSON body where the server
    supports that (uvicorn does), else with a plain 403."""
    if (await receive())["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        return await send({"type": "websocket.close", "code": 1008})
    body = JSONResponse(err.body()).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "websocket.http.response.start", "status": err.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


class CountRequests:
    """Counts every answered request by endpoint and status, errors included."""

    def __init__(self, app: ASGIApp, handlers: Handlers):
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [499]  # stays so when the client left before the answer

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            status[0] = 500  # answered by the outermost error middleware
            raise
        finally:
            self.handlers.metrics.request_done(endpoint_of(scope["path"]), status[0])


def validation_error(exc: RequestValidationError, max_messages: int) -> APIError:
    errors = list(exc.errors())
    # A content part of an unknown type fails every branch of the union; its tag error is the
    # one that says what is wrong.
    # Otherwise the deepest error: for `content: str | list[part]` the list branch's error
    # names the field that is wrong.
    tagged = [e for e in errors if e.get("type") in ("union_tag_invalid", "union_tag_not_found")]
    errors = sorted(tagged or errors, key=lambda e: -len(e.get("loc", ())))
    e = (errors or [{"loc": (), "msg": "invalid request", "type": ""}])[0]
    param, previous = "", None
    for part in e.get("loc", ()):
        # skip "body", and the tag of a content part (its type repeats as its field's name)
        if (part == "body" and not param) or part == previous:
            continue
        previous = part
        if isinstance(part, int):
            param += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)) and part not in (
            "str",
            "int",
            "float",
            "bool",
            "none",
            "list",
        ):
            param += f".{part}" if param else str(part)
    kind = e.get("type", "")
    if kind == "too_long" and param == "messages":  # past protocol.MAX_MESSAGES: parsing stopped
        return too_many_messages(None, min(max_messages, MAX_MESSAGES))
    if kind == "json_invalid":
        return APIError(400, f"malformed JSON: {e.get('msg')}", code="invalid_json")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = (e.get("ctx") or {}).get("tag", "")
        message = f"unknown content part type {tag!r}; expected text, input_audio or audio_url"
        return APIError(400, message, param=param or None, code="invalid_content_part")
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{msg}", param=param or None, code="invalid_value")


def create_app(engine: Any, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    handlers = Handlers(engine, settings)
    app = FastAPI(title="qwen-audio", docs_url=None, redoc_url=None)
    app.state.handlers = handlers
    app.state.settings = settings

    def error_response(request: Request, err: APIError) -> JSONResponse:
        handlers.metrics.error(endpoint_of(request.url.path), err.code or err.type)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError):
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError):
        return error_response(request, validation_error(exc, settings.max_messages))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):
            return error_response(request, body_too_large(settings.max_body_bytes))
        if isinstance(exc.__cause__, BodyTimedOut):
            return error_response(request, body_timed_out(settings))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers)
        return error_response(request, err)

    @app.exception_handler(ClientGone)
    async def on_client_gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it; logs and metrics do

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(
            request, APIError(500, "internal server error", code="internal_error")
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await handlers.chat(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await handlers.completion(body, request)

    def audio_route(path: str, translate: bool):
        @app.post(path)
        async def audio(
            request: Request,
            file: UploadFile = File(...),
            model: str | None = Form(None),
            language: str | None = Form(None),
            prompt: str | None = Form(None),
            response_format: str = Form("json"),
            temperature: float = Form(0.0),
            stream: bool = Form(False),
            segmentation: str | None = Form(None),
        ):
            form = AudioForm(
                model, language, prompt, response_format, temperature, stream, segmentation
            )
            return await handlers.transcribe(request, file, form, translate)

    audio_route("/v1/audio/transcriptions", translate=False)
    audio_route("/v1/audio/translations", translate=True)

    realtime = Realtime(handlers, settings)
    app.state.realtime = realtime

    @app.websocket("/v1/realtime")
    async def realtime_session(ws: WebSocket):
        await realtime.serve(ws)

    @app.get("/v1/models")
    async def models():
        return handlers.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        cards = [c for c in handlers.models()["data"] if c["id"] == model_id]
        if not cards:
            raise APIError(404, f"model {model_id!r} is not served here", code="model_not_found")
        return cards[0]

    @app.get("/health")
    async def health():
        return handlers.health()

    @app.get("/metrics")
    async def metrics():
        return handlers.metrics_text()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # The last added runs first: counting, CORS (its preflights carry no key), the Host and key
    # checks before any of the body is read, then the body's size and time limits.
    app.add_middleware(
        BodyTimeout, read_timeout_s=settings.read_timeout_s, min_rate=settings.min_body_rate
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Gatekeeper, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(CountRequests, handlers=handlers)
    return app
