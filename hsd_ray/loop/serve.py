"""The chat service: a Ray Serve deployment (`ChatService`) answering OpenAI Chat Completions over HTTP.

Driven by `run_service` (the training job, tests) or `serve run serve_app:app`. Each replica holds one engine
(`make_engine` on `resolve_model(cfg.model)`) and:

- follows published weights: a `WeightFollower` on the version registry actor, attached lazily (looked up every few
  seconds), so the service also runs standalone without the loop. The engine lock makes each request run on exactly one
  policy version; the reply's `system_fingerprint` names it.
- feeds capture (when `cfg.capture.enabled` and the ledger actor exists): a request ending in [assistant, user] is
  shown to the ledger with `observe` (fired, not awaited); the reply it produced is `record`ed — awaited, with
  `capture.call_timeout_s` — before the response is returned (streaming: before the finish chunk and `[DONE]`), so a
  follow-up sent right after is matched whichever replica serves it. Capture can never fail a chat: errors and
  timeouts are counted (`hsd_capture_errors_total`, and in /health) and logged.

Concurrent requests with equal sampling settings share one engine call (`GenerationBatcher`, serve.max_batch); the
reply's position in a batch never changes it (seeded requests run alone).

Streaming is real SSE framing, but the offline engines do not generate incrementally: the whole reply is generated
first, then streamed one token (decoded piece) per chunk.

Routes: POST /v1/chat/completions, GET /v1/models, GET /health (policy version, replica id, capture counts).
Wire format and validation live in hsd_ray/loop/openai_api.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from hsd_ray import metrics
from hsd_ray.config import Config
from hsd_ray.core.prompts import render_prompt
from hsd_ray.core.engine_api import SamplingParams
from hsd_ray.loop import NAMESPACE
from hsd_ray.loop import openai_api as oa
from hsd_ray.loop.batching import GenerationBatcher
from hsd_ray.loop.broadcast import REGISTRY_ACTOR_NAME, WeightFollower
from hsd_ray.loop.capture import LEDGER_ACTOR_NAME, ServedReply

APP_NAME = "hsd-chat"
LOOKUP_RETRY_S = 2.0  # how often a replica looks again for a missing ledger / registry actor
REPLICA_HEADER = "x-hsd-replica"

log = logging.getLogger("ray.serve")  # Serve's logger: lines land in the replica's log file

api = FastAPI(title="hsd-ray chat", docs_url=None, redoc_url=None, openapi_url=None)
oa.install_error_handlers(api)


# ---- helpers (above the deployment: Serve pickles the class by value when it is decorated) ------------------------


async def _json_body(request: Request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        raise oa.APIError("request body is not valid JSON") from None


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve (constructed directly in a test)
        return "local"


def _actor_id(handle) -> object:
    return getattr(handle, "_actor_id", None) if handle is not None else None


@serve.deployment(max_ongoing_requests=16)
@serve.ingress(api)
class ChatService:
    """One serving replica. Constructed with `Config.model_dump()` (a dict travels to replicas more simply)."""

    def __init__(self, config: dict):
        from hsd_ray.engines.factory import make_engine
        from hsd_ray.models import resolve_model

        self.cfg = Config.model_validate(config)
        self.engine = make_engine(
            resolve_model(self.cfg.model), self.cfg.engine, enable_lora=self.cfg.learner.lora.enabled
        )
        self.replica_id = _replica_id()
        self.batcher = GenerationBatcher(
            self.engine.generate, max_batch=self.cfg.serve.max_batch, wait_s=self.cfg.serve.batch_wait_ms / 1000
        )
        self.created = int(time.time())
        self.capture_counts = {"observed": 0, "recorded": 0, "errors": 0}
        self._ledger = None
        self._ledger_seen = False  # once found, a missing ledger means lost capture (counted as errors)
        self._ledger_next_lookup = 0.0
        self._background: set[asyncio.Task] = set()
        self.follower: WeightFollower | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._follow_registry, name="hsd-registry-attach", daemon=True).start()
        self._report_version()
        log.info("chat replica %s ready: model %s, engine %s", self.replica_id, self.cfg.model, self.cfg.engine.kind)

    # ---- routes ---------------------------------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        t0 = time.perf_counter()
        status = "500"
        try:
            response = await self._chat(request, t0)
            status = "200"
            return response
        except oa.APIError as e:
            status = str(e.status_code)
            raise
        finally:
            metrics.inc("hsd_chat_requests_total", status=status)

    @api.get("/v1/models")
    async def models(self):
        model = {"id": self.cfg.serve.model_name, "object": "model", "created": self.created, "owned_by": "hsd-ray"}
        return {"object": "list", "data": [model]}

    @api.get("/health")
    async def health(self):
        version = self._report_version()
        return {
            "status": "ok",
            "replica": self.replica_id,
            "model": self.cfg.serve.model_name,
            "policy_version": version.version,
            "adapter_id": version.adapter_id,
            "fingerprint": version.fingerprint(),
            "following_registry": self.follower is not None,
            "batching": self.batcher.stats(),
            "capture": {**self.capture_counts, "enabled": self.cfg.capture.enabled, "ledger": self._ledger is not None},
        }

    # ---- chat -----------------------------------------------------------------------------------------------------
    async def _chat(self, request: Request, t0: float):
        received_at = time.time()
        call = oa.parse_chat_request(await _json_body(request), self.cfg.serve)
        user_id = oa.user_identity(call.user, request.headers.get("authorization"))
        if len(call.messages) >= 2 and call.messages[-2]["role"] == "assistant":
            await self._observe(user_id, call.messages, received_at)
        prompt, params = await asyncio.to_thread(self._prepare, call)
        try:
            gen = await self.batcher.generate(prompt, params)
        except Exception as e:  # noqa: BLE001 - any engine failure is this request's 500, the replica stays up
            log.error("generation failed on replica %s: %s: %s", self.replica_id, type(e).__name__, e)
            raise oa.APIError(
                f"generation failed: {type(e).__name__}: {e}", status_code=500, type="server_error", code="engine_error"
            ) from None
        self._report_version(gen.version.version)
        reply = ServedReply(
            user_id=user_id,
            adapter_id=gen.version.adapter_id,
            context=call.messages,
            reply=gen.text,
            token_ids=list(gen.token_ids),
            logprobs=[float(x) for x in gen.logprobs],
            finished=gen.finished,
            policy_version=gen.version.version,
            replied_at=time.time(),
        )
        ids = dict(id=oa.completion_id(), model=self.cfg.serve.model_name, fingerprint=gen.version.fingerprint())
        headers = {REPLICA_HEADER: self.replica_id}
        if not call.stream:
            await self._record(reply)
            logprobs = None
            if call.logprobs:
                pieces = await asyncio.to_thread(oa.text_pieces, self.engine.tokenizer, gen.token_ids, gen.text)
                logprobs = oa.logprob_entries(pieces, gen.logprobs)
            body = oa.chat_completion(
                **ids,
                text=gen.text,
                finish_reason=gen.finish_reason,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=len(gen.token_ids),
                logprobs=logprobs,
            )
            metrics.observe("hsd_chat_latency_s", time.perf_counter() - t0)
            return JSONResponse(body, headers=headers)
        pieces = await asyncio.to_thread(oa.text_pieces, self.engine.tokenizer, gen.token_ids, gen.text)
        content, closing = oa.stream_chunks(
            **ids,
            created=int(time.time()),
            pieces=pieces,
            finish_reason=gen.finish_reason,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=len(gen.token_ids),
            include_usage=call.include_usage,
        )

        async def events():
            for chunk in content:
                yield oa.sse(chunk)
            await self._record(reply)  # before the client can see the end of the reply
            for chunk in closing:
                yield oa.sse(chunk)
            yield oa.SSE_DONE
            metrics.observe("hsd_chat_latency_s", time.perf_counter() - t0)

        headers["cache-control"] = "no-cache"
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _prepare(self, call: oa.ChatCall) -> tuple[list[int], SamplingParams]:
        """Render with the one prompt renderer; the sampling params (runs on a worker thread, off the event loop)."""
        limit = self.cfg.engine.max_model_len
        try:
            prompt = render_prompt(self.engine.tokenizer, call.messages, max_tokens=limit)
        except ValueError as e:
            raise oa.APIError(f"messages: {e}", param="messages") from None
        if len(prompt) >= limit:  # render_prompt left-truncates to `limit`: reaching it means too long, never truncate
            raise oa.APIError(
                f"messages: the prompt needs at least {len(prompt)} tokens, but the model's context is {limit} tokens "
                "(prompt and reply together)",
                param="messages",
                code="context_length_exceeded",
            )
        params = SamplingParams(
            max_tokens=min(call.max_tokens, limit - len(prompt)),  # the reply must fit the context too
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            seed=call.seed,
        )
        return prompt, params

    # ---- capture --------------------------------------------------------------------------------------------------
    async def _observe(self, user_id: str, messages: list, received_at: float) -> None:
        """Show a possible follow-up to the ledger without waiting for it (errors are counted in the background)."""
        ledger = await self._get_ledger()
        if ledger is None:
            return
        try:
            ref = ledger.observe.remote(user_id, messages, received_at)
        except Exception as e:  # noqa: BLE001
            self._capture_failed("observe", e)
            return
        self.capture_counts["observed"] += 1
        task = asyncio.get_running_loop().create_task(self._settle(ref, "observe"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle(self, ref, what: str) -> None:
        try:
            await asyncio.wait_for(ref, max(self.cfg.capture.call_timeout_s, 30.0))
        except Exception as e:  # noqa: BLE001
            self._capture_failed(what, e)

    async def _record(self, reply: ServedReply) -> None:
        """Record the served reply in the ledger, waiting at most capture.call_timeout_s; never raises."""
        if not self.cfg.capture.enabled:
            return
        ledger = await self._get_ledger()
        if ledger is None:
            if self._ledger_seen:
                self._capture_failed("record", RuntimeError("ledger actor unavailable"))
            return
        try:
            await asyncio.wait_for(ledger.record.remote(reply), self.cfg.capture.call_timeout_s)
            self.capture_counts["recorded"] += 1
        except Exception as e:  # noqa: BLE001 - a timeout or a dead ledger must not fail the chat
            self._capture_failed("record", e)

    async def _get_ledger(self):
        """The ledger actor handle, looked up lazily (at most every LOOKUP_RETRY_S while missing)."""
        if not self.cfg.capture.enabled or self._ledger is not None:
            return self._ledger
        now = time.monotonic()
        if now < self._ledger_next_lookup:
            return None
        self._ledger_next_lookup = now + LOOKUP_RETRY_S
        try:
            self._ledger = await asyncio.to_thread(ray.get_actor, LEDGER_ACTOR_NAME, namespace=NAMESPACE)
            self._ledger_seen = True
        except ValueError:  # not running: standalone service, or the ledger died
            pass
        return self._ledger

    def _capture_failed(self, what: str, error: BaseException) -> None:
        self.capture_counts["errors"] += 1
        metrics.inc("hsd_capture_errors_total")
        detail = "timed out" if isinstance(error, asyncio.TimeoutError) else f"{type(error).__name__}: {error}"
        log.warning("capture %s failed on replica %s (chat answered anyway): %s", what, self.replica_id, detail)
        if not isinstance(error, asyncio.TimeoutError):
            self._ledger, self._ledger_next_lookup = None, 0.0  # look it up again (it may have been restarted)

    # ---- weights --------------------------------------------------------------------------------------------------
    def _follow_registry(self) -> None:
        """Attach a WeightFollower to the registry actor when it appears; re-attach if it is replaced."""
        while not self._stop.is_set():
            try:
                registry = ray.get_actor(REGISTRY_ACTOR_NAME, namespace=NAMESPACE)
            except Exception:  # noqa: BLE001 - not running (standalone), or Ray briefly unreachable
                registry = None
            current = self.follower.registry if self.follower is not None else None
            if registry is not None and _actor_id(registry) != _actor_id(current):
                if self.follower is not None:
                    self.follower.stop()
                self.follower = WeightFollower(
                    self.engine, registry, role="serve", poll_s=self.cfg.broadcast.poll_seconds
                ).start()
                log.info("replica %s follows the weight registry", self.replica_id)
            self._stop.wait(LOOKUP_RETRY_S)

    def _report_version(self, version: int | None = None):
        current = self.engine.version
        metrics.set_gauge(
            "hsd_replica_policy_version", current.version if version is None else version, replica=self.replica_id
        )
        return current

    def __del__(self):
        if hasattr(self, "_stop"):  # the constructor may have failed before
            self._stop.set()
        if getattr(self, "follower", None) is not None:
            self.follower.stop()


# ---- entry points ----------------------------------------------------------------------------------------------------


def build_app(cfg: Config) -> serve.Application:
    """The chat application for `cfg` (replicas and their CPU reservation from cfg.serve)."""
    return ChatService.options(
        num_replicas=cfg.serve.replicas,
        ray_actor_options={"num_cpus": cfg.serve.cpus_per_replica},
        logging_config={"enable_access_log": cfg.serve.access_log},
    ).bind(cfg.model_dump(mode="json"))


def run_service(cfg: Config, *, blocking: bool = False) -> str:
    """Start Serve's HTTP proxy on cfg.serve.host:port and deploy the app as "hsd-chat" at "/".

    Returns the local base URL for OpenAI clients, `http://127.0.0.1:PORT/v1` (blocking=True never returns). Serve's
    HTTP options are fixed by the first `serve.start` in a Ray cluster: if Serve already runs on another port, that
    port is the one returned (and a warning logged).
    """
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    port = _http_port(default=cfg.serve.port)
    if port != cfg.serve.port:
        log.warning("Serve already listens on port %d (cfg.serve.port=%d is ignored)", port, cfg.serve.port)
    serve.run(build_app(cfg), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://127.0.0.1:{port}/v1"


def _http_port(default: int) -> int:
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # noqa: BLE001 - private API; fall back to what we asked for
        return default
