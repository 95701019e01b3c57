"""The version gate's reference top-k comes with its greedy probe replies (tiny random model, both engines, no Ray):
it is what a scoring pass over the same replies returns, so the KL numbers did not change when that pass went."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


def _load_moved_weights(gate, model_dir) -> None:
    """The tiny model plus seeded Gaussian noise, as version 1, into the gate's engine: a candidate that moved."""
    from hsd_ray.core.policy import export_weights
    from hsd_ray.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(model_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gate.engine.load_weights(export_weights(model, version=1, step=1))


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_reference_top_k_from_generation_equals_a_scoring_pass(tiny_model_dir, kind):
    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.core.version_gate import mean_kl
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    gate = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(kind=kind),
                                         VersionGateConfig(probe_max_tokens=12, check_max_tokens=4), False), None)
    k, base = gate.settings.gate.top_k, gate.base
    assert len(base.targets) == len(base.topk) > 0
    scored = gate.engine.score(base.targets, top_k=k)
    for (ids, logp), s in zip(base.topk, scored):
        assert ids.shape == s.topk_ids_T_K.shape == (len(s.logp_T), k)
        np.testing.assert_allclose(logp, s.topk_logp_T_K, atol=1e-4)
        assert (ids == s.topk_ids_T_K).mean() > 0.95  # near-ties may swap places between the two passes
    assert mean_kl([(s.topk_ids_T_K, s.topk_logp_T_K) for s in scored], base.topk) < 1e-5

    numbers, _ = gate.evaluate()  # the base against itself: nothing moved
    assert numbers.kl_accepted < 1e-5 and numbers.kl_base < 1e-5
    _load_moved_weights(gate, tiny_model_dir)
    moved, _ = gate.evaluate()
    assert moved.kl_accepted > 100 * max(numbers.kl_accepted, 1e-7)


def test_a_per_user_adapters_checks_skip_the_kl_passes_and_read_the_rest_alike(tiny_model_dir):
    """Judged on CAPABILITY_CHECKS (a per-user adapter's candidate), evaluate measures no KL and every other number as
    it does under all the checks."""
    from dataclasses import replace

    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.core.version_gate import CAPABILITY_CHECKS, gate_reasons
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    gate = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(kind="hf"),
                                         VersionGateConfig(probe_max_tokens=12, check_max_tokens=4), False), None)
    _load_moved_weights(gate, tiny_model_dir)
    every, every_replies = gate.evaluate()
    capability, replies = gate.evaluate(checks=CAPABILITY_CHECKS)
    assert capability.kl_accepted is None and capability.kl_base is None and every.kl_accepted > 0
    # one_answer off (max_one_answer_share 1, the default): its yes/no probes are not asked, at start or per candidate
    assert gate.verdicts_base == (0, 0.0) and capability.yes_no == every.yes_no == 0
    assert [r.token_ids for r in replies] == [r.token_ids for r in every_replies]
    measured_alike = replace(every, kl_accepted=None, kl_base=None, relevance=None, seconds=0.0)
    assert replace(capability, seconds=0.0) == measured_alike
    assert gate_reasons(capability, gate.limits, CAPABILITY_CHECKS) == gate_reasons(every, gate.limits,
                                                                                    CAPABILITY_CHECKS)


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_sampled_checks_draw_with_the_base_seeds(tiny_model_dir, kind):
    """`version_gate.sampled_per_probe`: the candidate's replies are sampled with the seeds the base's were, so the
    base against itself reads exactly the base (same texts, relevance 0), and moved weights read differently."""
    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    cfg = VersionGateConfig(probe_max_tokens=12, check_max_tokens=4, sampled_per_probe=2)
    gate = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(kind=kind), cfg, False), None)
    assert len(gate.sampled_base) == 2 * len(gate.probe_prompts)
    assert gate._sampled() == gate.sampled_base  # seeded: drawn again, the same replies
    assert len(set(gate.sampled_base[0::2]) | set(gate.sampled_base[1::2])) > len(gate.probe_prompts)  # 2 per probe
    numbers, _ = gate.evaluate()
    assert numbers.sampled == len(gate.sampled_base) and numbers.sampled_relevance == 0.0
    assert numbers.sampled_loops == numbers.sampled_loops_base
    _load_moved_weights(gate, tiny_model_dir)
    assert gate._sampled() != gate.sampled_base
    moved, _ = gate.evaluate()
    assert moved.sampled_relevance != 0.0 and "sampled loops" in moved.summary()
    off, _ = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(kind=kind),
                                           cfg.model_copy(update={"sampled_per_probe": 0}), False), None).evaluate()
    assert off.sampled == 0 and off.sampled_relevance is None
