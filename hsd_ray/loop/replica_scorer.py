"""A teacher's scoring on the chat replicas' own engine (`teacher.engine: serving`).

By default a teacher holds a vLLM engine of its own that follows the broadcast weights: a second model copy competing
with the replicas for the same cores. Measured in the whole loop (bench/bench_teacher_engine.py, SmolLM2, 2 CPUs),
sharing the replica's engine trains 1.31x faster with a teacher of 625 MB instead of 3.3 GB, but chats wait (time to
first token p50 4.4x), which is why `own` stays the default. With `teacher.engine: serving` the teacher
loads only a tokenizer, and each scoring batch is one Serve handle call to a chat replica (`ChatService.score`),
which runs it on its async vLLM engine in the same continuous batch as the chats.

What the teacher gives up and gets:
- It scores with whatever version the replica serves — the accepted shared policy, the same one a teacher of its own
  would follow — and each batch is scored by exactly one version (a swap drains scoring like a reply); the replica
  returns that version, which the scores carry.
- A replica that is restarting, or a service not deployed yet, is no fault of the turns: the call is retried on
  another (or the restarted) replica a few times, then `EngineUnavailable` is raised and the teacher gives the lease
  back whole (`TurnQueue.release`), so no turn is blamed, retried as poison or dead-lettered for it. A request the
  replica's engine refuses (a turn too long) raises its own error, and the teacher bisects as usual.
"""

from __future__ import annotations

import logging
import time

from hsd_ray.core.engine_api import EngineUnavailable, ScoreRequest, TokenScores
from hsd_ray.core.weights import PolicyVersion

log = logging.getLogger(__name__)


class ReplicaScorer:
    """The scoring part of the Engine interface (`tokenizer`, `version`, `score`), answered by a chat replica."""

    def __init__(self, model_dir: str, app_name: str, deployment: str = "ChatService", attempts: int = 4,
                 call_timeout_s: float = 300.0):
        from hsd_ray.models import load_tokenizer

        self.tokenizer = load_tokenizer(model_dir)  # the engines' own tokenizer, pad id included
        self.app_name, self.deployment = app_name, deployment
        self.attempts, self.call_timeout_s = attempts, call_timeout_s
        self._handle = None
        self._version = PolicyVersion()  # the version of the last batch scored (base v0 before any)

    @property
    def version(self) -> PolicyVersion:
        return self._version

    def score(self, requests: list[ScoreRequest], top_k: int = 0) -> list[TokenScores]:
        """One replica call for the whole list; retried on another replica while replicas are unreachable."""
        from ray.exceptions import RayTaskError

        if not requests:
            return []
        for attempt in range(self.attempts):
            try:
                scores, version = self._call().score.remote(requests, top_k).result(timeout_s=self.call_timeout_s)
            except RayTaskError:
                raise  # the replica ran the call and its engine refused it: the requests' problem, not reachability
            except Exception as e:  # noqa: BLE001 - replica died / not deployed / timed out: try again, then give up
                self._handle = None
                if attempt + 1 == self.attempts:
                    raise EngineUnavailable(f"no chat replica answered the scoring call ({type(e).__name__}: "
                                            f"{e})"[:1000]) from e
                log.warning("scoring on a chat replica failed (%s: %s); retrying", type(e).__name__, e)
                time.sleep(min(8.0, 2.0 ** attempt))
                continue
            self._version = version
            return scores
        raise AssertionError("unreachable")

    def _call(self):
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        return self._handle
