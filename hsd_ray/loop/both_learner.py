"""The learner in personalization.mode=both: every turn trains its user's adapter, and the turns within the influence
limits also train the shared policy, which the adapters sit on.

One Ray Train worker (config cross-check) holds two models:
- the shared policy: loop/learner.py's `Learner` — full weights, its optimizer, checkpoints, the version gate and
  rollback, published on the broadcast cadence, as in mode global;
- the users' adapters on their own copy of the shared policy: loop/personal_learner.py's `PersonalLearner`.

    loop { round-robin batch → shared step on the turns within the influence limits → one step per user's adapter
           → publish what is due → the adapters' copy of the shared policy moves to the served version }

The adapters' copy follows the *served* shared version (the latest accepted one), not the learner's newest weights:
a user is answered by their adapter on the served shared policy, so that is what the adapter trains on; a rejected
shared version never reaches it.

Influence limits (config `influence`) bound the shared policy only. The queue hands out every turn, round robin over
users, and keeps no quota; this learner picks each batch's `shared_turns` (core/influence.py) and counts what it
leaves out of the shared step by reason (`hsd_shared_turns_skipped_total{reason}`, and `shared_skipped` in the
learner's progress). The queue's counts are of turns: every turn is acknowledged once, by the adapter steps. A
rejected shared version rolls the shared policy back; its turns are not counted as rejected, since their adapters
keep what they learned (an adapter's own rejection counts its turns, as in per_user mode).
"""

from __future__ import annotations

import time
from collections import Counter

from hsd_ray import metrics
from hsd_ray.core.influence import UserWindow, shared_turns
from hsd_ray.loop.learner import Learner, _log_to_stdout
from hsd_ray.loop.personal_learner import PersonalLearner


def train_loop_both(config: dict) -> None:
    """Runs on the (single) Ray Train worker in mode both; `config["settings"]` is the LearnerSettings."""
    _log_to_stdout()
    settings = config["settings"]
    shared = Learner(settings)
    shared.owns_turns = False
    shared.restore()
    personal = PersonalLearner(settings)
    personal.restore()
    personal.follow_shared()  # a restarted job: the adapters sit on the served version at once
    limits = settings.influence
    window, skipped = UserWindow(limits.max_turns_per_user, limits.window_s), Counter(user_quota=0, too_few_users=0)
    while (turns := personal.next_batch()) is not None:
        chosen, left_out = shared_turns([t.user_id for t in turns], window, limits.min_users_per_step, time.time())
        if chosen:
            shared.step([turns[i] for i in chosen])
            shared.checkpoint_if_due()
        for reason, n in left_out.items():
            if n:
                skipped[reason] += n
                metrics.inc("hsd_shared_turns_skipped_total", n, reason=reason)
        if any(left_out.values()):
            personal.control.report.remote({"shared_skipped": dict(skipped)})
        personal.step(turns)
        shared.publish_if_due()
        personal.follow_shared()
    personal.finish()
    shared.finish()
