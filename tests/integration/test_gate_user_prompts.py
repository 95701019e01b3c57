"""The version gate tries a user adapter's candidate on its user's own prompts (tiny random model, transformers
engine, no Ray): the base's replies to them come from an all-zero copy of the adapter and are exactly the base
model's; they are cached per prompt; the candidate's numbers count its loops on those prompts against the base's.
A shared candidate is tried on the traffic it trained on the same way, against the base model's replies (loaded
from the model folder while the engine held another version), with relevance."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.integration

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me about dogs."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is rain?"}],
    [{"role": "user", "content": "Name a colour."}],
]


@pytest.fixture(scope="module")
def gatekeeper(tiny_model_dir):
    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    gate = VersionGateConfig(probe_max_tokens=12, check_max_tokens=4)
    return Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(), gate, enable_lora=True), None)


def _user_candidate(tiny_model_dir):
    """A user adapter whose lora_B is far from zero, so its replies differ from the base's."""
    from dataclasses import replace

    from hsd_ray.config import LoraConfig
    from hsd_ray.core.policy import apply_lora, export_weights
    from hsd_ray.core.weights import user_adapter_id
    from hsd_ray.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(str(tiny_model_dir), "float32", "cpu")
    weights = export_weights(apply_lora(model, LoraConfig(r=4)), version=3, step=3)
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(t.shape, generator=gen) if "lora_B" in k else t) for k, t in weights.tensors.items()}
    return replace(weights, version=replace(weights.version, adapter_id=user_adapter_id("alice")), tensors=tensors)


def test_user_prompts_are_judged_against_the_base_models_own_replies(gatekeeper, tiny_model_dir):
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.version_gate import loop_rate
    from hsd_ray.engines.hf import HFEngine

    gk = gatekeeper
    prompts = [render_prompt(gk.engine.tokenizer, c) for c in CONVERSATIONS]
    candidate = _user_candidate(tiny_model_dir)
    base_texts = gk.base_replies_to(prompts)

    plain = HFEngine(str(tiny_model_dir))  # the base model alone, no adapter machinery
    greedy = SamplingParams(max_tokens=12, temperature=0.0, seed=0)
    assert base_texts == [g.text for g in plain.generate(prompts, greedy)]

    loads, load = [], gk.engine.load_weights
    gk.engine.load_weights = lambda w: (loads.append(w.version.version), load(w))[1]
    try:
        assert gk.base_replies_to(prompts[1:]) == base_texts[1:] and loads == []  # cached
        gk.base_replies_to([*prompts, prompts[0][:-1]])
        assert loads == []  # a new prompt, but no user's adapter was ever in the slot: nothing to empty
        gk._load(candidate)
        new = prompts[1][:-1]
        assert gk.base_replies_to([new]) == [g.text for g in plain.generate([new], greedy)]  # the slot was emptied
        assert loads == [3, 0]  # the candidate, then the all-zero adapter once for the new prompt
        gk.base_replies_to([new, prompts[2][:-1]])
        assert loads == [3, 0]  # the slot holds zeros already: the next new prompt loads nothing
        gk._load(candidate)
        numbers, _ = gk.evaluate(gk.base, prompts, base_texts)
    finally:
        del gk.engine.load_weights
    cand_texts = [g.text for g in gk.engine.generate(prompts, greedy)]
    assert cand_texts != base_texts  # the adapter moved the replies: the comparison is not of a model with itself
    assert numbers.user_prompts == 3
    assert numbers.user_loops == loop_rate(cand_texts) and numbers.user_loops_base == loop_rate(base_texts)
    assert "user loops" in numbers.summary()


def test_without_user_prompts_the_numbers_say_none(gatekeeper):
    numbers, _ = gatekeeper.evaluate(copy.copy(gatekeeper.base))
    assert numbers.user_prompts == 0 and "user loops" not in numbers.summary()


def test_traffic_prompts_are_judged_against_the_base_model(tiny_model_dir):
    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.core.engine_api import SamplingParams
    from hsd_ray.core.policy import export_weights
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.engines.hf import HFEngine
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings
    from hsd_ray.models import load_model_and_tokenizer

    gate = VersionGateConfig(probe_max_tokens=12, check_max_tokens=4, traffic_probes=8)
    gk = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(), gate, enable_lora=False), None)
    prompts = [render_prompt(gk.engine.tokenizer, c) for c in CONVERSATIONS]
    questions = [c[-1]["content"] for c in CONVERSATIONS]
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), "float32", "cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    moved = export_weights(model, version=5, step=5)

    gk.engine.load_weights(moved)  # the engine holds another version (the last candidate) when new prompts come
    loads, load = [], gk.engine.load_weights
    gk.engine.load_weights = lambda w: (loads.append(w.version.version), load(w))[1]
    try:
        base_texts = gk.base_replies_to(prompts, gk.traffic_base, lambda: gk._load_base(moved))
        plain = HFEngine(str(tiny_model_dir))
        assert base_texts == [g.text for g in plain.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0,
                                                                                     seed=0))]
        assert loads == [0] and gk.engine_shared == 0  # the base's weights, read from the model folder
        assert gk.base_replies_to(prompts[1:], gk.traffic_base, lambda: gk._load_base(moved)) == base_texts[1:]
        assert loads == [0] and gk.base_replies == {}  # cached apart from a user's yardstick: nothing loaded again
        same, _ = gk.evaluate(gk.base, prompts, base_texts, questions=questions)
        gk._load(moved)
        numbers, _ = gk.evaluate(gk.base, prompts, base_texts, questions=questions)
    finally:
        del gk.engine.load_weights
    assert same.user_prompts == 3 and same.user_relevance == 0.0  # the base against itself: nothing moved
    assert numbers.user_prompts == 3 and numbers.user_relevance != 0.0
    assert "user relevance" in numbers.summary()
    no_questions, _ = gk.evaluate(gk.base, prompts, base_texts)
    assert no_questions.user_relevance is None


def test_with_sampled_checks_traffic_is_read_sampled_with_the_base_seeds(tiny_model_dir):
    """sampled_per_probe > 0: a shared candidate's traffic prompts are read k times each at the serving temperature
    instead of the fixed probes, against the base's replies drawn with the same seeds (the base against itself:
    the same replies, relevance exactly 0); the greedy reading of them is not done twice."""
    from hsd_ray.config import EngineConfig, VersionGateConfig
    from hsd_ray.core.version_gate import loop_rate
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    gate = VersionGateConfig(probe_max_tokens=12, check_max_tokens=4, traffic_probes=8, sampled_per_probe=2)
    gk = Gatekeeper(GatekeeperSettings(str(tiny_model_dir), EngineConfig(), gate, enable_lora=False), None)
    prompts = [render_prompt(gk.engine.tokenizer, c) for c in CONVERSATIONS]
    questions = [c[-1]["content"] for c in CONVERSATIONS]
    base_sampled = gk._sampled(prompts)
    assert len(base_sampled) == 6 and gk._sampled(prompts) == base_sampled  # seeded: the same draws again
    numbers, _ = gk.evaluate(gk.base, prompts, base_sampled, questions=questions, sampled=True)
    assert numbers.sampled == 6 and numbers.sampled_relevance == 0.0 and numbers.user_prompts == 0
    assert numbers.sampled_loops == numbers.sampled_loops_base == loop_rate(base_sampled)
    probes_only, _ = gk.evaluate(gk.base)
    assert probes_only.sampled == 2 * len(gk.probe_prompts)
    greedy_read, _ = gk.evaluate(gk.base, prompts, gk.base_replies_to(prompts, gk.traffic_base, lambda: None),
                                 questions=questions)  # greedy yardstick (a user's, or traffic without sampling)
    assert greedy_read.user_prompts == 3 and greedy_read.sampled == 2 * len(gk.probe_prompts)
