"""The chat service: a Ray Serve deployment (`ChatService`) answering OpenAI Chat Completions over HTTP.

Driven by `run_service` (the training job, tests) or `serve run serve_app:app`. Each replica holds one engine and
the HTTP routes; the rest is delegated:

- weights: a `RegistryAttachment` (broadcast.py) keeps a `WeightFollower` on the version registry once it appears, so
  the service also runs standalone without the loop. The engine lock makes each request run on exactly one policy
  version; the reply's `system_fingerprint` names it.
- capture: a `CaptureClient` (capture.py). Only a request that was validated and answered is captured: once its
  reply is generated, a request ending in [assistant, user] is shown to the ledger with `observe` (fired, not
  awaited; a rejected or failed request is never captured); the reply it produced is `record`ed — awaited, with
  `capture.call_timeout_s` — before the response is returned (streaming: before the finish chunk and `[DONE]`), so
  a follow-up sent right after is matched whichever replica serves it. Capture can never fail a chat: errors and
  timeouts are counted (`hsd_capture_errors_total`, and in /health) and logged. A request with `store: false` is
  neither observed nor recorded: neither it nor its reply can become (part of) a turn.

Engines: with an engine that batches continuously (`engine.continuous_batching`: vLLM's async engine,
engines/vllm_async.py) every request goes straight to `engine.stream`; a streamed reply is sent chunk by chunk as the
engine samples it (`_live_stream`; the admission slot is held until the stream ends, and a client that goes away
cancels the stream, which aborts the request in the engine). The fingerprint is the version of the reply's first
delta: the engine drains before a weight swap, so one reply has one version. The offline engines (transformers, or
vLLM with engine.vllm_async=false) go through `GenerationBatcher` (serve.max_batch): concurrent requests with equal
sampling settings share one engine call, the reply's position in a batch never changes it (seeded requests run
alone), and a streamed reply is generated whole first, then sent one token (decoded piece) per chunk.

Back-pressure and health (admission.py, limits in `serve.*`): a replica works on at most `max_ongoing_requests` chat
requests and lets `max_queued_requests` more wait; beyond that, or past `request_timeout_s`, a request gets a 503,
and a user over `user_rate_per_s` a 429, each with `Retry-After` and an OpenAI error body. Serve's own per-replica
limits sit above these (so the replica, not Serve's proxy with its plain-text 503, answers overload), with a 503 +
Retry-After of Serve's as the backstop. `check_health` fails while an engine call has run longer than
`engine_stall_s`, so Serve replaces a replica whose engine is stuck (and one whose event loop is blocked: its check
times out).

`n` choices: from one engine call on the offline engines (one version; a seeded choice i is drawn with seed + i), as n
concurrent streams (seeds likewise) on the async engine, where a streamed request sends each choice's deltas live,
merged in the order they are sampled (live_stream.py). Every choice is recorded for capture (the follow-up matches
the one the client continued with; the others expire unmatched). Were choices to straddle a weight swap, the
fingerprint names every version ("…-v3+…-v4"), never silently one.

Per-user adapters (personalization.mode=per_user): `AdapterRouter` (adapter_routing.py) picks the weights that
answer the request's user — their own adapter once published, else the shared policy — and puts its id into the
sampling params; the fingerprint then names the adapter and version.

Routes: POST /v1/chat/completions, GET /v1/models, GET /health (policy version, replica id, capture counts).
Wire format and validation live in hsd_ray/loop/openai_api.py (requests, errors) and openai_replies.py (replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from hsd_ray import metrics
from hsd_ray.config import AuthConfig, CaptureConfig, Config, EngineConfig, PersonalizationConfig, ServeConfig
from hsd_ray.core.engine_api import Generation, SamplingParams
from hsd_ray.core.prompts import render_prompt
from hsd_ray.loop import openai_api as oa
from hsd_ray.loop import openai_replies as replies
from hsd_ray.loop.adapter_routing import AdapterRouter
from hsd_ray.loop.admission import AdmissionGate, Overloaded, RateLimited, UserRateLimit
from hsd_ray.loop.batching import GenerationBatcher
from hsd_ray.loop.broadcast import RegistryAttachment
from hsd_ray.loop.capture import CaptureClient, ServedReply, forget_user_on_loop, set_opt_out_on_loop
from hsd_ray.loop.identity import Identity
from hsd_ray.loop.live_stream import LiveChoices

APP_NAME = "hsd-chat"
REPLICA_HEADER = "x-hsd-replica"

log = logging.getLogger("ray.serve")  # Serve's logger: lines land in the replica's log file

api = FastAPI(title="hsd-ray chat", docs_url=None, redoc_url=None, openapi_url=None)
oa.install_error_handlers(api)


@dataclass(frozen=True)
class ServiceSettings:
    """The config sections a chat replica reads, resolved once (config at the edges)."""

    model_dir: str
    engine: EngineConfig
    serve: ServeConfig
    capture: CaptureConfig
    auth: AuthConfig  # keys_file already absolute (Identity.resolve_path)
    poll_s: float  # how often the weight follower looks for a new version
    enable_lora: bool  # the engine must accept LoRA adapters (the learner trains LoRA, or per-user adapters)
    personalization: PersonalizationConfig  # per_user: each user answered by their own adapter (adapter_routing.py)
    demo_keys: tuple = ()  # api_keys: the job's demo users' key records (loop/users.py)

    @classmethod
    def from_config(cls, cfg: Config, demo_keys: tuple = ()) -> "ServiceSettings":
        from hsd_ray.models import resolve_model

        auth = cfg.auth.model_copy(update={"keys_file": Identity.resolve_path(cfg.auth.keys_file)})
        return cls(str(resolve_model(cfg.model)), cfg.engine, cfg.serve, cfg.capture, auth, cfg.broadcast.poll_seconds,
                   cfg.learner.lora.enabled or cfg.personalization.per_user, cfg.personalization, demo_keys)


# ---- helpers (above the deployment: Serve pickles the class by value when it is decorated) ------------------------


async def _json_body(request: Request, scfg: ServeConfig):
    """The request's JSON, refused (413/400) by size and nesting depth before it is parsed."""
    return oa.parse_json(await oa.read_body(request, scfg.max_body_bytes), scfg.max_json_depth)


async def _on_loop(action):
    """Await a user-data action on the running loop; 503 when this service runs without one."""
    try:
        return await action
    except ValueError:  # ray.get_actor: no such named actor
        raise oa.APIError("no learning loop is running behind this service", status_code=503, type="server_error",
                          code="no_loop") from None


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve (constructed directly in a test)
        return "local"


async def _last(items):
    """The last item of an engine stream: its Generation."""
    item = None
    async for item in items:
        pass
    return item


def _fingerprint(gens: list[Generation]) -> str:
    """`system_fingerprint`: the version that produced the reply; choices that straddled a weight swap name every
    version they came from."""
    return "+".join(dict.fromkeys(g.version.fingerprint() for g in gens))


# (module-level helpers the class uses are defined above it: serve.ingress captures the class when it is defined)
@serve.deployment
@serve.ingress(api)
class ChatService:
    """One serving replica: the HTTP routes over one engine."""

    def __init__(self, settings: ServiceSettings):
        from hsd_ray.engines.factory import make_engine

        self.settings = settings
        self.engine = make_engine(settings.model_dir, settings.engine, enable_lora=settings.enable_lora,
                                  serving=True, max_loras=settings.personalization.max_resident)
        self.replica_id = _replica_id()
        where = f"replica {self.replica_id}"
        self.batcher = GenerationBatcher(
            self.engine.generate, max_batch=settings.serve.max_batch, wait_s=settings.serve.batch_wait_ms / 1000
        )
        self.created = int(time.time())
        scfg = settings.serve
        self.gate = AdmissionGate(scfg.max_ongoing_requests, scfg.max_queued_requests)
        self.rate = UserRateLimit(scfg.user_rate_per_s, scfg.user_burst)
        self.capture = CaptureClient(settings.capture.enabled, settings.capture.call_timeout_s, where)
        self.identity = Identity(settings.auth.mode, settings.auth.keys_file, settings.demo_keys)
        self.weights = RegistryAttachment(self.engine, role="serve", poll_s=settings.poll_s, where=where)
        self.adapters = AdapterRouter(self.engine, per_user=settings.personalization.per_user,
                                      max_resident=settings.personalization.max_resident, check_s=settings.poll_s,
                                      where=where)
        self._report_version()
        log.info("chat replica %s ready: engine %s", self.replica_id, settings.engine.kind)

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

    # the caller's own data (auth.mode=api_keys): delete it (capture.forget_user), or stop / resume its capture
    @api.delete("/v1/users/me")
    async def delete_me(self, request: Request):
        user = self.identity.own_user(request.headers.get("authorization"))
        return {"deleted": True, **await _on_loop(forget_user_on_loop(user))}

    @api.post("/v1/users/me/opt-out")
    async def opt_out(self, request: Request):
        user = self.identity.own_user(request.headers.get("authorization"))
        return {"opted_out": await _on_loop(set_opt_out_on_loop(user, True))}

    @api.post("/v1/users/me/opt-in")
    async def opt_in(self, request: Request):
        user = self.identity.own_user(request.headers.get("authorization"))
        return {"opted_out": await _on_loop(set_opt_out_on_loop(user, False))}

    @api.get("/v1/models")
    async def models(self):
        model = {"id": self.settings.serve.model_name, "object": "model", "created": self.created,
                 "owned_by": "hsd-ray"}
        return {"object": "list", "data": [model]}

    @api.get("/health")
    async def health(self):
        version = self._report_version()
        return {
            "status": "ok",
            "replica": self.replica_id,
            "model": self.settings.serve.model_name,
            "policy_version": version.version,
            "adapter_id": version.adapter_id,
            "fingerprint": version.fingerprint(),
            "following_registry": self.weights.follower is not None,
            "adapters": self.adapters.stats(),
            "batching": self.engine.stats() if self.engine.continuous_batching else self.batcher.stats(),
            "admission": {**self.gate.stats(), "rate_limited": self.rate.refused},
            "capture": self.capture.stats(),
            "feedback_gate": await self.capture.gate_stats(),
        }

    # ---- chat -----------------------------------------------------------------------------------------------------
    async def _chat(self, request: Request, t0: float):
        received_at = time.time()
        authorization = request.headers.get("authorization")
        key_user = self.identity.key_user(authorization)  # 401 before the body is read
        call = oa.parse_chat_request(await _json_body(request, self.settings.serve), self.settings.serve)
        user_id = self.identity.user_id(key_user, call.user, authorization)
        if call.stream and self.engine.continuous_batching:
            return await self._live_stream(call, user_id, received_at, t0)
        gens = await self._generate(call, user_id)
        served = await self._answered(call, user_id, received_at, gens)
        if call.stream or call.logprobs:  # detokenising per token is CPU work: off the event loop
            choices = await asyncio.to_thread(self._choices, gens, call)
        else:
            choices = self._choices(gens, call)
        ids = dict(id=replies.completion_id(), model=self.settings.serve.model_name, fingerprint=_fingerprint(gens),
                   prompt_tokens=gens[0].prompt_tokens, completion_tokens=sum(len(g.token_ids) for g in gens))
        headers = {REPLICA_HEADER: self.replica_id}
        if not call.stream:
            for reply in served:
                await self.capture.record(reply)
            body = replies.chat_completion(**ids, choices=choices)
            metrics.observe("hsd_chat_latency_s", time.perf_counter() - t0)
            return JSONResponse(body, headers=headers)
        content, closing = replies.stream_chunks(**ids, created=int(time.time()), choices=choices,
                                                 include_usage=call.include_usage)

        async def events():
            for chunk in content:
                yield replies.sse(chunk)
            for reply in served:
                await self.capture.record(reply)  # before the client can see the end of the reply
            for chunk in closing:
                yield replies.sse(chunk)
            yield replies.SSE_DONE
            metrics.observe("hsd_chat_latency_s", time.perf_counter() - t0)

        headers["cache-control"] = "no-cache"
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _live_stream(self, call: oa.ChatCall, user_id: str, received_at: float, t0: float):
        """SSE on the async engine: a chunk leaves as soon as vLLM sampled its tokens, the n choices merged as they
        come (live_stream.py). Admission and every choice's first token are awaited here, so a refusal or a failure
        before the first token still gets its HTTP status; the admission slot is held until the stream ends, and a
        client that goes away cancels the streams (the engine aborts them)."""
        scfg = self.settings.serve
        deadline = asyncio.get_running_loop().time() + scfg.request_timeout_s
        held = contextlib.AsyncExitStack()
        try:
            self.rate.take(user_id)
            await held.enter_async_context(self.gate.slot())
            async with asyncio.timeout_at(deadline):
                prompt, params = await asyncio.to_thread(self._prepare, call, await self.adapters.route(user_id))
                choices = await LiveChoices.open(self.engine, prompt, params, call.n, held)
        except BaseException as e:
            await held.aclose()
            if isinstance(e, Exception):
                raise self._api_error(e) from None
            raise
        common = dict(id=replies.completion_id(), model=scfg.model_name, fingerprint=choices.fingerprint(),
                      created=int(time.time()), include_usage=call.include_usage)

        async def events():
            sent: list[list[str]] = [[] for _ in range(call.n)]
            gens: list = [None] * call.n
            unsent = replies.UnsentLogprobs(self.engine.tokenizer, call.n) if call.logprobs else None
            try:
                for i in range(call.n):
                    yield replies.sse(replies.chat_chunk(delta={"role": "assistant", "content": ""}, index=i, **common))
                async with contextlib.aclosing(choices.merged(deadline)) as items:
                    async for i, item in items:
                        if isinstance(item, Generation):
                            gens[i] = item
                            continue
                        entries = unsent.add(i, item, take=bool(item.text)) if unsent else None
                        if item.text:
                            sent[i].append(item.text)
                            yield replies.sse(replies.chat_chunk(delta={"content": item.text}, index=i,
                                                                 logprobs=entries, **common))
            except Exception as e:  # noqa: BLE001 - headers are sent: the error goes into the stream
                err = self._api_error(e)
                yield replies.sse(oa.error_body(err.message, code=err.code, type=err.type))
                return
            finally:
                await held.aclose()
            await self._record_streams(call, user_id, received_at, gens, ["".join(s) for s in sent])
            for chunk in replies.closing_chunks(finish_reasons=[g.finish_reason for g in gens],
                                                prompt_tokens=gens[0].prompt_tokens,
                                                completion_tokens=sum(len(g.token_ids) for g in gens), **common):
                yield replies.sse(chunk)
            yield replies.SSE_DONE
            metrics.observe("hsd_chat_latency_s", time.perf_counter() - t0)

        headers = {REPLICA_HEADER: self.replica_id, "cache-control": "no-cache"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _record_streams(self, call, user_id: str, received_at: float, gens: list, streamed: list[str]) -> None:
        """Capture live-streamed replies, before the client sees their end. Only a choice whose streamed text is the
        text of its recorded token ids (else the follow-up could not be matched to the right tokens)."""
        for reply, gen, text in zip(await self._answered(call, user_id, received_at, gens), gens, streamed):
            if text != gen.text:
                log.warning("streamed text differs from the decoded reply (%d vs %d chars): not captured",
                            len(text), len(gen.text))
                continue
            await self.capture.record(reply)

    async def _answered(self, call: oa.ChatCall, user_id: str, received_at: float, gens: list) -> list[ServedReply]:
        """A request that was validated and answered: its follow-up is shown to the ledger (if it ends in [assistant,
        user]), once; the replies (one per choice) to record for capture."""
        self._report_version(max(g.version.version for g in gens))
        if call.store and len(call.messages) >= 2 and call.messages[-2]["role"] == "assistant":  # answered: capture
            await self.capture.observe(user_id, call.messages, received_at)
        return [ServedReply(
            user_id=user_id,
            adapter_id=self.adapters.trained_adapter(user_id),
            context=call.messages,
            reply=gen.text,
            token_ids=list(gen.token_ids),
            logprobs=[float(x) for x in gen.logprobs],
            finished=gen.ended_on_eos,  # a reply cut at a stop string is not trained as ended (no EOS appended)
            policy_version=gen.version.version,
            replied_at=time.time(),
            store=call.store,
        ) for gen in gens]

    def _choices(self, gens: list, call: oa.ChatCall) -> list[replies.Choice]:
        """The reply builders' view of each generation: text pieces when streamed, log-prob entries when asked for
        (streamed: grouped by the piece that completes their tokens)."""
        out, tokenizer = [], self.engine.tokenizer
        for gen in gens:
            spans = replies.piece_spans(tokenizer, gen.token_ids, gen.text) if call.stream else []
            logprobs = (replies.logprob_entries(tokenizer, gen.token_ids, gen.logprobs, gen.top_logprobs)
                        if call.logprobs else None)
            by_piece = replies.logprobs_by_piece(logprobs, spans) if call.stream and logprobs is not None else None
            out.append(replies.Choice(gen.text, gen.finish_reason, [p for p, _ in spans] if call.stream else None,
                                      None if call.stream else logprobs, by_piece))
        return out

    async def _generate(self, call: oa.ChatCall, user_id: str) -> list[Generation]:
        """The `call.n` replies, once the user's rate limit and the replica's admission gate let the request in,
        within the request timeout (429 / 503 with Retry-After otherwise); an engine failure is this request's 500."""
        try:
            self.rate.take(user_id)
            async with asyncio.timeout(self.settings.serve.request_timeout_s), self.gate.slot():
                prompt, params = await asyncio.to_thread(self._prepare, call, await self.adapters.route(user_id))
                if not self.engine.continuous_batching:
                    return await self.batcher.generate_n(prompt, params, call.n)
                return list(await asyncio.gather(*(_last(self.engine.stream(prompt, params.for_index(i)))
                                                   for i in range(call.n))))
        except Exception as e:  # noqa: BLE001 - mapped to the request's error status
            raise self._api_error(e) from None

    def _api_error(self, e: Exception) -> oa.APIError:
        """429 / 503 (with Retry-After) for admission refusals and timeouts; any engine failure is a 500."""
        scfg = self.settings.serve
        if isinstance(e, RateLimited):
            return oa.APIError(str(e), status_code=429, type="requests", code="rate_limit_exceeded",
                               headers={"Retry-After": str(max(1, math.ceil(e.retry_after_s)))})
        if isinstance(e, Overloaded):
            return oa.APIError(str(e), status_code=503, type="server_error", code="overloaded",
                               headers={"Retry-After": str(scfg.retry_after_s)})
        if isinstance(e, TimeoutError):
            return oa.APIError(f"the request did not finish within serve.request_timeout_s ({scfg.request_timeout_s:g} "
                               "s); retry later", status_code=503, type="server_error", code="timeout",
                               headers={"Retry-After": str(scfg.retry_after_s)})
        if isinstance(e, oa.APIError):
            return e
        log.error("generation failed on replica %s: %s: %s", self.replica_id, type(e).__name__, e)
        return oa.APIError(f"generation failed: {type(e).__name__}: {e}", status_code=500, type="server_error",
                           code="engine_error")

    def check_health(self) -> None:
        """Serve's health check: fails while an engine call has run longer than serve.engine_stall_s, so a replica
        with a stuck engine is replaced."""
        if self.engine.continuous_batching:
            if self.engine.dead():
                raise RuntimeError("the vLLM engine core died")
            return
        busy = self.batcher.busy_s()
        if busy > self.settings.serve.engine_stall_s:
            raise RuntimeError(f"engine call running for {busy:.1f} s (serve.engine_stall_s="
                               f"{self.settings.serve.engine_stall_s:g}): the engine is stuck")

    def _prepare(self, call: oa.ChatCall, adapter_id: str) -> tuple[list[int], SamplingParams]:
        """Render with the one prompt renderer; the sampling params, on the weights that answer this user (runs on a
        worker thread, off the event loop)."""
        limit = self.settings.engine.max_model_len
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
        return prompt, call.sampling(min(call.max_tokens, limit - len(prompt)), adapter_id)  # reply fits the context

    # ---- a teacher's scoring (teacher.engine=serving, loop/replica_scorer.py): a handle call, not an HTTP route ----
    async def score(self, requests: list, top_k: int = 0):
        """Hindsight scoring in this replica's engine, beside the chats → (scores, the version that scored them)."""
        if not hasattr(self.engine, "score_async"):  # config.py refuses this combination; named here all the same
            raise TypeError(f"{type(self.engine).__name__} cannot score beside serving (the async vLLM engine can)")
        return await self.engine.score_async(requests, top_k)

    # ---- weights ---------------------------------------------------------------------------------------------------
    def _report_version(self, version: int | None = None):
        current = self.engine.version
        metrics.set_gauge(
            "hsd_replica_policy_version", current.version if version is None else version, replica=self.replica_id
        )
        return current

    def __del__(self):
        if getattr(self, "weights", None) is not None:  # the constructor may have failed before
            self.weights.stop()


# ---- entry points ----------------------------------------------------------------------------------------------------


def build_app(cfg: Config, demo_keys: tuple = ()) -> serve.Application:
    """The chat application for `cfg` (replicas and their CPU reservation from cfg.serve)."""
    from ray.serve.config import BackpressureConfig

    s = cfg.serve
    return ChatService.options(
        num_replicas=s.replicas,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica, "resources": s.resources},
        logging_config={"enable_access_log": s.access_log},
        # Serve's limits sit above the replica's admission gate (+8 for /health and /v1/models), so overload is
        # answered by the replica with an OpenAI body; Serve's 503 + Retry-After is the backstop beyond them. Every
        # request passes through the router's queue for a moment, so its limit must not be tight (at 1, a health
        # probe beside one chat request was dropped).
        max_ongoing_requests=s.max_ongoing_requests + s.max_queued_requests + 8,
        max_queued_requests=s.max_ongoing_requests + s.max_queued_requests + 64,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=s.retry_after_s),
        health_check_period_s=s.health_check_period_s,
        health_check_timeout_s=s.health_check_timeout_s,
    ).bind(ServiceSettings.from_config(cfg, demo_keys))


def run_service(cfg: Config, *, blocking: bool = False, demo_keys: tuple = ()) -> str:
    """Start Serve's HTTP proxy on cfg.serve.host:port and deploy the app as "hsd-chat" at "/".

    Returns the local base URL for OpenAI clients, `http://127.0.0.1:PORT/v1` (blocking=True never returns). Serve's
    HTTP options are fixed by the first `serve.start` in a Ray cluster: if Serve already runs on another port, that
    port is the one returned (and a warning logged).
    """
    # One HTTP proxy, on the head: the URL the job prints is the head's, and a proxy per node would leave chats
    # on a node that dies (two nodes of one host even share the port).
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port}, proxy_location="HeadOnly")
    port = serving_port(default=cfg.serve.port)
    if port != cfg.serve.port:
        log.warning("Serve already listens on port %d (cfg.serve.port=%d is ignored)", port, cfg.serve.port)
    serve.run(build_app(cfg, demo_keys), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://127.0.0.1:{port}/v1"


def serving_port(default: int) -> int:
    """The port Serve's HTTP proxy listens on in this cluster (`default` when it cannot be read)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # noqa: BLE001 - private API; fall back to what we asked for
        return default
