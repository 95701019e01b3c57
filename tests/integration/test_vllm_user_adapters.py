"""Per-user adapters on vLLM (offline and async engines) against the transformers engine's peft adapters: each user
is answered by their own adapter, a new version replaces the old without cutting a reply that runs on it, an evicted
adapter leaves its user on the shared policy, new shared weights load under resident adapters (mode both)."""

from __future__ import annotations

import asyncio
import copy
import os

import pytest
import torch

pytest.importorskip("vllm")

from hsd_ray.config import Config  # noqa: E402
from hsd_ray.core.adapter_bank import AdapterBank  # noqa: E402
from hsd_ray.core.engine_api import Generation, SamplingParams  # noqa: E402
from hsd_ray.core.weights import user_adapter_id  # noqa: E402
from hsd_ray.engines.hf import HFEngine  # noqa: E402

pytestmark = pytest.mark.integration

ALICE, BOB = user_adapter_id("alice"), user_adapter_id("bob")
GREEDY = dict(max_tokens=8, temperature=0)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """{(adapter, version): WeightSet} of visibly different adapters (random lora_B), as the learner exports them."""
    hf = HFEngine(tiny_model_dir)
    bank = AdapterBank(copy.deepcopy(hf.model), Config().personalization.lora, lr=1e-3,
                       root=tmp_path_factory.mktemp("bank"))
    torch.manual_seed(0)
    out = {}
    for adapter, version in ((ALICE, 1), (BOB, 1), (ALICE, 2)):
        bank._activate(adapter)
        with torch.no_grad():
            for name, p in bank.model.named_parameters():
                if f".{adapter}." in name and "lora_B" in name:
                    p.normal_(0, 0.3)
        out[adapter, version] = bank.export(adapter, version, version)
    return out


def _reference(tiny_model_dir, adapters, prompt) -> dict:
    """What the transformers engine answers (greedy) per adapter version, and for the shared policy."""
    hf = HFEngine(tiny_model_dir)
    ref = {"base": hf.generate([prompt], SamplingParams(**GREEDY))[0]}
    for (adapter, version), weights in adapters.items():
        hf.load_weights(weights)
        ref[adapter, version] = hf.generate([prompt], SamplingParams(**GREEDY, adapter_id=adapter))[0]
    return ref


def _same(got: Generation, want: Generation) -> None:
    assert got.token_ids == want.token_ids
    assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) < 1e-3


def test_offline_engine_answers_each_user_with_their_adapter(tiny_model_dir, adapters):
    from hsd_ray.engines.vllm import VLLMEngine

    prompt = [1, 2, 3, 4, 5]
    ref = _reference(tiny_model_dir, adapters, prompt)
    assert ref[ALICE, 1].token_ids != ref["base"].token_ids != ref[BOB, 1].token_ids
    engine = VLLMEngine(tiny_model_dir, enable_lora=True, max_lora_rank=8, max_loras=2)
    try:
        engine.load_weights(adapters[ALICE, 1])
        engine.load_weights(adapters[BOB, 1])
        ask = {who: engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=who))[0] for who in (ALICE, BOB)}
        _same(ask[ALICE], ref[ALICE, 1])
        _same(ask[BOB], ref[BOB, 1])
        assert ask[ALICE].version.fingerprint() == f"hsd-{ALICE}-v1"
        _same(engine.generate([prompt], SamplingParams(**GREEDY))[0], ref["base"])
        engine.load_weights(adapters[ALICE, 2])
        _same(engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=ALICE))[0], ref[ALICE, 2])
        assert len(os.listdir(engine._lora_root)) == 2  # alice v2 and bob: alice v1 removed
        engine.evict_adapter(BOB)
        bob = engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=BOB))[0]
        _same(bob, ref["base"])
        assert bob.version.fingerprint() == "hsd-base-v0" and len(os.listdir(engine._lora_root)) == 1
    finally:
        engine.close()


def test_async_engine_swaps_a_users_adapter_without_cutting_their_reply(tiny_model_dir, adapters):
    from hsd_ray.engines.vllm_async import AsyncVLLMEngine

    prompt = [1, 2, 3, 4, 5]
    ref = _reference(tiny_model_dir, adapters, prompt)
    engine = AsyncVLLMEngine(tiny_model_dir, enable_lora=True, max_lora_rank=8, max_loras=2)
    try:
        engine.load_weights(adapters[ALICE, 1])
        engine.load_weights(adapters[BOB, 1])
        gens = engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=ALICE))
        _same(gens[0], ref[ALICE, 1])

        async def long_reply_across_a_swap():
            """A 200-token reply on alice v1; once its first delta arrived, v2 is loaded from another thread."""
            params = SamplingParams(max_tokens=200, temperature=1.0, seed=3, adapter_id=ALICE)
            swap, last = None, None
            async for item in engine.stream(prompt, params):
                if swap is None:
                    swap = asyncio.get_running_loop().run_in_executor(None, engine.load_weights, adapters[ALICE, 2])
                last = item
            await swap
            return last

        during = asyncio.run(long_reply_across_a_swap())
        assert isinstance(during, Generation) and during.version.version == 1  # one version, start to end
        assert len(during.token_ids) > 0 and engine.aborted == 0
        after = engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=ALICE))[0]
        _same(after, ref[ALICE, 2])
        assert after.version.fingerprint() == f"hsd-{ALICE}-v2"
        assert len(os.listdir(engine._lora_root)) == 2  # v1 removed once its reply ended
        _same(engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=BOB))[0], ref[BOB, 1])
        _same(engine.generate([prompt], SamplingParams(**GREEDY))[0], ref["base"])
        assert engine.swaps == []  # per-user adapters never drained the engine

        # personalization.mode=both: new shared weights load under the resident adapters; each user then gets their
        # adapter on the new shared weights, everyone else the new shared weights (as the transformers engine)
        shared = _shifted_shared(tiny_model_dir)
        engine.load_weights(shared)
        hf = HFEngine(tiny_model_dir)
        hf.load_weights(shared)
        hf.load_weights(adapters[ALICE, 2])
        for who in (ALICE, "base"):
            want = hf.generate([prompt], SamplingParams(**GREEDY, adapter_id=who))[0]
            got = engine.generate([prompt], SamplingParams(**GREEDY, adapter_id=who))[0]
            _same(got, want)
            assert want.token_ids != (ref[ALICE, 2] if who == ALICE else ref["base"]).token_ids  # the shift shows
        assert engine.version.version == 5 and engine.user_adapters[ALICE].version == 2
    finally:
        engine.close()


def _shifted_shared(tiny_model_dir):
    """Shared weights v5 with every tensor moved: what a shared version of mode both brings."""
    from hsd_ray.core.policy import export_weights

    model = HFEngine(tiny_model_dir).model
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return export_weights(model, version=5, step=5)
