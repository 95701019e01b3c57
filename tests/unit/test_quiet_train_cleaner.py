"""The embedded Ray's worker hook drops only the Train PG cleaner's state-API warning (hsd_ray/loop/runtime.py)."""

from __future__ import annotations

import logging

from hsd_ray.loop.runtime import LOCAL_RUNTIME_ENV, quiet_train_cleaner


def test_hook_drops_only_the_state_api_warning(caplog):
    assert LOCAL_RUNTIME_ENV["worker_process_setup_hook"] is quiet_train_cleaner
    quiet_train_cleaner()
    cleaner = logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner")
    with caplog.at_level(logging.WARNING):
        cleaner.propagate = True
        cleaner.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
                        "Continuing to monitor.")
        cleaner.warning("Failed to clean up placement group: boom")
        logging.getLogger("ray.train.other").warning("Failed to query Ray Train Controller actor state.")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Failed to clean up placement group: boom", "Failed to query Ray Train Controller actor state."]
