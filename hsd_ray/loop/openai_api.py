"""The OpenAI Chat Completions request side: parsing/validation and error bodies (replies: openai_replies.py).

Owned here so the Ray Serve deployment (hsd_ray/loop/serve.py) only glues it to the engine and to capture. Pure: no Ray,
no torch; FastAPI/pydantic only (the error handlers that keep FastAPI's 422 from ever reaching a client live here too).

What is accepted (a field that is not one of OpenAI's request fields gets a 400, as OpenAI answers it):
- `messages`: roles system / developer (OpenAI's newer name for it; treated as system) / user / assistant, content a
  string or a list of text parts, null only for an assistant (checked by `hsd_ray.core.turns.validate_messages`); the
  last message must be the user's.
- `max_completion_tokens` (preferred) or `max_tokens`, at most `ServeConfig.max_tokens_limit`; `temperature`, `top_p`,
  `seed`, `stop` (a string or up to `max_stop_sequences` strings), `stream` + `stream_options.include_usage`, `user`,
  `logprobs` + `top_logprobs` (0-20), `presence_penalty` / `frequency_penalty` (-2 to 2, on the generated tokens, as
  vLLM), `store`, and `n` (choices; at most `ServeConfig.max_n`).
- Defaults where a field is absent: `ServeConfig.temperature` (0.7) and `ServeConfig.top_p` (0.9), not OpenAI's 1
  and 1, and `ServeConfig.max_tokens`.
- `model` is accepted whatever it says: the service serves one policy and reports `ServeConfig.model_name`.
- Ignored, as they do not change the reply: metadata, parallel_tool_calls, prediction, prompt_cache_key,
  safety_identifier, service_tier.
- Refused with a 400 naming the field, because ignoring them would silently give a different answer than asked for
  (`_refuse_unsupported`): tools / functions (non-empty), tool_choice or function_call that require a call,
  response_format other than text, a non-empty logit_bias, audio, modalities other than text, web_search_options,
  reasoning_effort, verbosity.

Hostile input is refused cheaply, cheapest check first (limits from `ServeConfig`): the body's size (413, from
Content-Length before it is read, and while it is read), UTF-8, JSON nesting depth (a vectorised bracket count before
`json.loads`, so deep nesting never reaches the recursive parser), NaN/Infinity, the message count (before any
per-message validation), then each field: lengths of content, `user` and `stop`, and lone surrogates (valid JSON,
invalid Unicode) anywhere in the text that is used.

Every rejection is HTTP 400 (413 for the body size) with `{"error": {"message", "type": "invalid_request_error",
"param", "code"}}`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hsd_ray.config import ServeConfig
from hsd_ray.core.engine_api import SamplingParams
from hsd_ray.core.turns import Message, TurnFormatError, is_valid_text, validate_messages

# ---- errors --------------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error the API reports to the client with an OpenAI-style body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        headers: dict[str, str] | None = None,  # e.g. Retry-After on a 429 / 503
    ):
        super().__init__(message)
        self.message, self.status_code, self.param, self.code, self.type = message, status_code, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, param=self.param, code=self.code, type=self.type)


def error_body(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str = "invalid_request_error",  # noqa: A002
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def install_error_handlers(app) -> None:
    """Make every error of a FastAPI app an OpenAI error body: APIError as raised, FastAPI's request validation
    (normally 422) as 400, HTTP errors (404, 405, ...) with their status, anything unexpected as 500."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    async def on_validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        body = error_body(f"{param or 'request'}: {first.get('msg', 'invalid request')}", param=param)
        return JSONResponse(body, status_code=400)

    async def on_http_error(request, exc: HTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type=kind), status_code=exc.status_code)

    async def on_unexpected(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {exc}", type="server_error"), status_code=500)

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


# ---- request body --------------------------------------------------------------------------------------------------


async def read_body(request, max_bytes: int) -> bytes:
    """The raw body of a Starlette request, or APIError 413 as soon as it is known to exceed `max_bytes` (from
    Content-Length before reading, else while reading: an oversized body is never held whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> APIError:
    got = f"{'at least ' if at_least else ''}{size} bytes"
    return APIError(f"request body too large: {got}, the limit is {limit} bytes", status_code=413,
                    code="request_too_large")


_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash escape inside a JSON string (\" included)
_BRACKET_STEP = np.zeros(256, np.int32)  # byte -> +1 opens, -1 closes, 0 otherwise
_BRACKET_STEP[list(b"[{")], _BRACKET_STEP[list(b"]}")] = 1, -1


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text, counted without parsing (brackets inside strings are
    skipped): vectorised, so a megabyte is counted in milliseconds and 50k levels never reach a recursive parser."""
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)  # what is left of a string holds no quote that does not delimit it
    byte = np.frombuffer(raw, np.uint8)
    outside = (np.cumsum(byte == ord('"')) & 1) == 0  # after an even number of quotes (a bracket is never a quote)
    return int(np.cumsum(_BRACKET_STEP[byte] * outside).max(initial=0))


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Body bytes → JSON value, or APIError 400: not UTF-8, nested deeper than `max_depth`, NaN/Infinity, not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(f"request body is not valid UTF-8 (byte {e.start})", code="invalid_encoding") from None
    depth = json_depth(raw)
    if depth > max_depth:
        raise APIError(f"request body is nested {depth} levels deep, at most {max_depth} are allowed",
                       code="nesting_too_deep")
    try:
        return json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise APIError("request body is not valid JSON") from None


# ---- request -------------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of a Chat Completions request this service understands (a field that is not OpenAI's is refused by
    `_refuse_unsupported`; OpenAI's other fields are checked there too)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: Any = Field(...)  # checked by validate_messages (its messages name the bad index)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Any = Field(None, validate_default=True)  # -> list[str]
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, what torch and vLLM generators accept
    user: str | None = None
    store: bool | None = None  # false: this request and its reply are never captured (absent: captured)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)  # OpenAI's range; needs logprobs: true
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):
            return [v] if v else []
        if isinstance(v, list) and all(isinstance(s, str) for s in v):
            return [s for s in v if s]  # count and lengths: checked against ServeConfig in parse_chat_request
        raise ValueError("must be a string or a list of strings")


@dataclass
class ChatCall:
    """A validated request, ready for the engine: plain messages and sampling settings."""

    messages: list[Message]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    user: str | None
    model: str | None
    logprobs: bool = False
    n: int = 1  # choices; choice i of a seeded request is drawn with seed + i
    store: bool = True  # OpenAI's `store`; only an explicit false opts out (the service captures by default)
    top_logprobs: int = 0  # per token, the k most likely alternatives (with logprobs)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def sampling(self, max_tokens: int, adapter_id: str) -> SamplingParams:
        """The engine's sampling params for this request (`max_tokens`: what fits the context)."""
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, stop=self.stop,
                              seed=self.seed, adapter_id=adapter_id, presence_penalty=self.presence_penalty,
                              frequency_penalty=self.frequency_penalty, top_logprobs=self.top_logprobs)


def parse_chat_request(body: Any, scfg: ServeConfig) -> ChatCall:
    """JSON body → ChatCall, or APIError (400) naming the offending parameter."""
    if not isinstance(body, dict):
        raise APIError("request body must be a JSON object")
    n_messages = body.get("messages")
    if isinstance(n_messages, list) and len(n_messages) > scfg.max_messages:  # before any per-message work
        raise APIError(f"messages: at most {scfg.max_messages} messages are allowed, got {len(n_messages)}",
                       param="messages", code="too_many_messages")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise APIError(f"{param}: {msg}", param=param) from None
    if req.n is not None and req.n > scfg.max_n:
        raise APIError(f"n: at most {scfg.max_n} choices are allowed, got {req.n}", param="n")
    if req.top_logprobs and not req.logprobs:
        raise APIError("top_logprobs: logprobs must be set to true when top_logprobs is used", param="top_logprobs")
    _refuse_unsupported(body)
    _check_limits(req, scfg)
    try:
        messages = validate_messages(req.messages)
    except TurnFormatError as e:
        raise APIError(str(e), param="messages") from None
    for i, m in enumerate(messages):
        _check_text(m["content"], f"messages[{i}].content", scfg.max_message_chars)
    if messages[-1]["role"] != "user":
        raise APIError(
            f"messages: the last message must have role 'user', got {messages[-1]['role']!r}", param="messages"
        )
    name, max_tokens = "max_tokens", scfg.max_tokens
    if req.max_completion_tokens is not None:
        name, max_tokens = "max_completion_tokens", req.max_completion_tokens
    elif req.max_tokens is not None:
        max_tokens = req.max_tokens
    if max_tokens > scfg.max_tokens_limit:
        raise APIError(f"{name}: at most {scfg.max_tokens_limit} is allowed, got {max_tokens}", param=name)
    return ChatCall(
        messages=messages,
        max_tokens=max_tokens,
        temperature=scfg.temperature if req.temperature is None else req.temperature,
        top_p=scfg.top_p if req.top_p is None else req.top_p,
        stop=req.stop,
        seed=req.seed,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        user=req.user,
        model=req.model,
        logprobs=bool(req.logprobs),
        n=req.n or 1,
        store=req.store is not False,
        top_logprobs=req.top_logprobs or 0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
    )


# The request fields of OpenAI's Chat Completions API (2026). Any other field gets a 400, as OpenAI answers it
# ("Unrecognized request argument supplied"): a client that sends, say, vLLM's `top_k` learns at once that it is not
# applied here, instead of silently getting a different sampling than it asked for.
OPENAI_FIELDS = frozenset({
    "messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})


def _refuse_unsupported(body: dict) -> None:
    """400 for a field that is not OpenAI's, and for one the service cannot honour and whose neutral value it is not
    (see the module docstring)."""
    unknown = sorted(k for k in body if k not in OPENAI_FIELDS)
    if unknown:
        raise APIError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                       code="unrecognized_argument")
    for name in ("audio", "web_search_options", "reasoning_effort", "verbosity"):  # change the reply; none here
        if body.get(name) is not None:
            raise APIError(f"{name}: not supported by this service (a text-only chat model)", param=name,
                           code="unsupported_parameter")
    if body.get("modalities") not in (None, ["text"]):
        raise APIError("modalities: only ['text'] is supported", param="modalities", code="unsupported_parameter")
    for name in ("tools", "functions"):
        if body.get(name):
            raise APIError(f"{name}: tool and function calling is not supported by this service", param=name,
                           code="unsupported_parameter")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise APIError(f"{name}: tool and function calling is not supported by this service", param=name,
                           code="unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise APIError("response_format: only {'type': 'text'} is supported", param="response_format",
                       code="unsupported_parameter")
    if body.get("logit_bias"):
        raise APIError("logit_bias: not supported", param="logit_bias", code="unsupported_parameter")


def _check_limits(req: ChatCompletionRequest, scfg: ServeConfig) -> None:
    """`user` and `stop` against their limits (count, length, valid Unicode)."""
    if req.user is not None:
        _check_text(req.user, "user", scfg.max_user_chars)
    if len(req.stop) > scfg.max_stop_sequences:
        raise APIError(f"stop: at most {scfg.max_stop_sequences} stop sequences are allowed, got {len(req.stop)}",
                       param="stop")
    for i, s in enumerate(req.stop):
        _check_text(s, f"stop[{i}]", scfg.max_stop_chars)


def _check_text(text: str, param: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise APIError(f"{param}: at most {max_chars} characters are allowed, got {len(text)}", param=param,
                       code="string_above_max_length")
    if not is_valid_text(text):
        raise APIError(f"{param}: invalid Unicode (a lone surrogate such as \\ud800)", param=param,
                       code="invalid_encoding")


def user_identity(request_user: str | None, authorization_header: str | None) -> str:
    """Who is chatting: the request's `user` field, else a stable hash of the bearer API key, else "anonymous".

    The key itself is never kept: "key-" + the first 16 hex digits of its sha256.
    """
    if isinstance(request_user, str) and request_user.strip():
        return request_user.strip()
    if authorization_header:
        scheme, _, token = authorization_header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return "key-" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return "anonymous"
