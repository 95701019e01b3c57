"""Every metric the system exports, in one place (Ray's Prometheus endpoint / dashboard; names get a `ray_` prefix
there). Metrics are created lazily per process, so importing this module costs nothing and works without Ray.

`Tally` is the one source of truth for an actor's event counts: one `add` both exports the metric and keeps the
snapshot that the actor's `stats()` returns, so the two can never disagree.

Funnel: replies recorded → turns captured / unmatched / expired → queue depth → dropped → scored → trained.
"""

from __future__ import annotations

import threading
import time

# name -> (kind, description, tag keys)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # serve
    "hsd_chat_requests_total": ("counter", "chat completion requests answered", ("status",)),
    "hsd_chat_latency_s": ("histogram", "chat completion latency (seconds, whole reply)", ()),
    "hsd_replica_policy_version": ("gauge", "policy version each serving replica is using", ("replica",)),
    # capture
    "hsd_replies_recorded_total": ("counter", "served replies recorded in the ledger", ()),
    "hsd_turns_captured_total": ("counter", "follow-ups matched to a served reply (turns emitted)", ()),
    "hsd_turns_unmatched_total": ("counter", "follow-ups whose previous reply is not ours (edited or foreign)", ()),
    "hsd_replies_expired_total": ("counter", "served replies that got no follow-up within the TTL", ()),
    "hsd_capture_errors_total": ("counter", "capture calls that failed or timed out (chat still answered)", ()),
    "hsd_turns_redacted_total": ("counter", "captured turns in which PII was redacted before queueing", ()),
    "hsd_replies_not_stored_total": ("counter", "replies to requests with store=false (never captured)", ()),
    # queue
    "hsd_queue_depth": ("gauge", "turns in the queue by stage", ("stage",)),
    "hsd_turns_dropped_total": ("counter", "turns dropped, by reason (overflow, not_feedback, lost, ...)", ("reason",)),
    "hsd_turns_redelivered_total": ("counter", "turns re-delivered after an expired teacher lease", ()),
    "hsd_gate_decisions_total": ("counter", "feedback gate decisions, e.g. feedback:complaint, not_feedback:new_topic",
                                 ("decision",)),
    # teacher
    "hsd_teacher_tokens_scored_total": ("counter", "prompt+reply tokens scored by teachers", ()),
    "hsd_teacher_turns_scored_total": ("counter", "turns scored by teachers", ()),
    "hsd_teacher_batch_s": ("histogram", "teacher scoring time per batch (seconds)", ()),
    # learner
    "hsd_learner_steps_total": ("counter", "optimizer steps", ()),
    "hsd_learner_tokens_total": ("counter", "reply tokens trained on", ()),
    "hsd_learner_turns_total": ("counter", "turns trained on", ()),
    "hsd_learner_loss": ("gauge", "loss of the last step", ()),
    "hsd_staleness_versions": ("histogram", "learner version minus the version that produced the reply", ()),
    "hsd_staleness_s": ("histogram", "seconds between the reply and the step that trained on it", ()),
    # broadcast
    "hsd_policy_version": ("gauge", "latest published policy version", ("adapter",)),
    "hsd_broadcast_s": ("histogram", "time to export and publish a weight set (seconds)", ()),
    "hsd_weight_load_s": ("histogram", "time for a replica/teacher to load a new weight set (seconds)", ("role",)),
    "hsd_weight_load_failures_total": ("counter", "weight sets a replica/teacher rejected", ("role",)),
    # per-user adapters (personalization.mode=per_user / both)
    "hsd_adapter_loads_total": ("counter", "per-user adapters a replica loaded (first use, or a newer version)", ()),
    "hsd_adapter_load_s": ("histogram", "time for a replica to fetch and load a per-user adapter (seconds)", ()),
    "hsd_adapter_evictions_total": ("counter", "per-user adapters a replica unloaded (LRU, or the user's data "
                                    "deleted)", ("reason",)),
    "hsd_user_adapters": ("gauge", "per-user adapters with a served version (registry)", ()),
    "hsd_shared_turns_skipped_total": ("counter", "mode both: turns that trained only their user's adapter, not the "
                                       "shared policy, by reason (user_quota, too_few_users)", ("reason",)),
    # version gate and per-version feedback
    "hsd_versions_rejected_total": ("counter", "candidate versions the version gate held back, by first reason",
                                    ("reason",)),
    "hsd_feedback_total": ("counter", "follow-ups to each served version by reception (complaint, positive, none)",
                           ("version", "kind")),
}

_BOUNDARIES = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800]
# Ray 2.60 stops exporting a gauge about two export intervals after its last `set` (measured: a gauge set once was gone
# from the metrics endpoint 20-25 s later while its actor lived on), so an idle queue would lose its depth and a replica
# its version. Every gauge a process has set is set again this often, for as long as the process lives.
GAUGE_REFRESH_S = 5.0
_lock = threading.Lock()
_made: dict[str, object] = {}
_gauge_values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_refresher: threading.Thread | None = None


def _get(name: str):
    with _lock:
        if name not in _made:
            from ray.util import metrics as rm

            kind, desc, tags = METRICS[name]
            if kind == "counter":
                _made[name] = rm.Counter(name, description=desc, tag_keys=tags)
            elif kind == "gauge":
                _made[name] = rm.Gauge(name, description=desc, tag_keys=tags)
            else:
                _made[name] = rm.Histogram(name, description=desc, boundaries=_BOUNDARIES, tag_keys=tags)
        return _made[name]


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    """Count; never raises (metrics must not break the path they observe)."""
    if value <= 0:
        return
    try:
        _get(name).inc(value, tags=tags or None)
    except Exception:  # noqa: BLE001 - no Ray / metrics agent: metrics are best effort
        pass


def set_gauge(name: str, value: float, **tags: str) -> None:
    """Set a gauge; it is set again every GAUGE_REFRESH_S so that Ray keeps exporting it."""
    global _refresher
    with _lock:
        _gauge_values[(name, tuple(sorted(tags.items())))] = value
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_gauges, name="hsd-gauge-refresh", daemon=True)
            _refresher.start()
    _set_gauge(name, value, tags)


def _set_gauge(name: str, value: float, tags: dict[str, str]) -> None:
    try:
        _get(name).set(value, tags=tags or None)
    except Exception:  # noqa: BLE001
        pass


def _refresh_gauges() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        with _lock:
            values = list(_gauge_values.items())
        for (name, tags), value in values:
            _set_gauge(name, value, dict(tags))


def observe(name: str, value: float, **tags: str) -> None:
    try:
        _get(name).observe(value, tags=tags or None)
    except Exception:  # noqa: BLE001
        pass


class Tally:
    """An actor's event counts, kept for `stats()` and exported as metrics by the same call.

    `metric_of` maps each count's key to the metric it exports (None: kept, not exported); `labels` lists, for keys
    counted by one label (e.g. drops by reason), the labels to report even while they are zero. A labelled key is
    exported with the metric's single tag set to the label.
    """

    def __init__(self, metric_of: dict[str, str | None], labels: dict[str, tuple[str, ...]] | None = None):
        labels = labels or {}
        for name in metric_of.values():
            if name is not None and name not in METRICS:
                raise KeyError(f"unknown metric {name!r}: declare it in METRICS")
        self._metric_of = dict(metric_of)
        self._counts: dict[str, int | dict[str, int]] = {
            key: {label: 0 for label in labels[key]} if key in labels else 0 for key in metric_of
        }

    def add(self, key: str, n: int = 1, label: str | None = None) -> None:
        if n <= 0:
            return
        if label is None:
            self._counts[key] += n
        else:
            by_label = self._counts[key]
            if not isinstance(by_label, dict):
                raise KeyError(f"{key!r} is not counted by label: declare it in `labels`")
            by_label[label] = by_label.get(label, 0) + n
        name = self._metric_of[key]
        if name is not None:
            tags = {METRICS[name][2][0]: label} if label is not None else {}
            inc(name, n, **tags)

    def discount(self, key: str, n: int) -> None:
        """Lower an unlabelled count by `n` (a reclassification, e.g. trained → dropped:rejected). The exported metric
        is a counter and stays where it is."""
        if n > 0:
            self._counts[key] -= n

    def __getitem__(self, key: str):
        return self._counts[key]

    def total(self, key: str) -> int:
        value = self._counts[key]
        return sum(value.values()) if isinstance(value, dict) else value

    def snapshot(self) -> dict:
        return {k: dict(v) if isinstance(v, dict) else v for k, v in self._counts.items()}
