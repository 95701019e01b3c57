"""VLLMEngine against the transformers reference (HFEngine / peft), on the same token ids.

One vLLM engine per configuration (module-scoped): plain (built through the factory) and LoRA-enabled. Tests that
change weights restore the original ones before they return, so the order of tests does not matter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from hsd_ray.config import EngineConfig  # noqa: E402
from hsd_ray.core.engine_api import SamplingParams, ScoreRequest  # noqa: E402
from hsd_ray.core.hindsight import build_example  # noqa: E402
from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES, render_prompt  # noqa: E402
from hsd_ray.core.turns import Turn  # noqa: E402
from hsd_ray.core.weights import PolicyVersion, WeightLoadError, WeightSet  # noqa: E402
from hsd_ray.engines.factory import make_engine  # noqa: E402
from hsd_ray.engines.hf import HFEngine  # noqa: E402

pytestmark = pytest.mark.integration

TEMPLATE = HINDSIGHT_TEMPLATES["online"]
LOGP_TOL = 1e-4  # float32 vLLM vs float32 transformers (measured ~5e-7)
K = 8  # teacher top-k used in these tests


# ---- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFEngine(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from hsd_ray.engines.vllm import VLLMEngine

    eng = make_engine(tiny_model_dir, EngineConfig(kind="vllm", vllm_max_logprobs=20))
    assert isinstance(eng, VLLMEngine)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def lora_engine(tiny_model_dir):
    from hsd_ray.engines.vllm import VLLMEngine

    eng = VLLMEngine(tiny_model_dir, enable_lora=True, max_lora_rank=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def base_state(hf):
    return {k: v.detach().clone() for k, v in hf.model.state_dict().items()}


# ---- turns → score requests ---------------------------------------------------------------------------------------
SINGLE = [
    Turn(
        context=[{"role": "user", "content": "What is the capital of France?"}],
        reply="The capital of France is Paris.",
        followup="Answer in one word please.",
    )
]
MULTI = [
    Turn(
        context=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Can you tell me about the river?"},
            {"role": "assistant", "content": "Sure, here is the river: it is simple and clear."},
            {"role": "user", "content": "Why does Alice like green apples?"},
        ],
        reply="Alice likes green apples because they are sour and fresh.",
        followup="No, I do not think so. She likes red ones.",
    )
]


def uneven_batch() -> list[Turn]:
    words = "the user asks about a good book in the morning and the teacher answers the question".split()
    turns = []
    for i in range(9):
        context = [{"role": "user", "content": " ".join(words[: 2 + (i * 5) % len(words)])}]
        if i % 3 == 2:
            context = [
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hello! How can I help you today?"},
                *context,
            ]
        reply = " ".join(words[i % 4 : i % 4 + 1 + (i * 7) % 13])
        turns.append(
            Turn(context=context, reply=reply, followup=f"Thank you for the help {i}!", reply_finished=i % 2 == 0)
        )
    return turns


def score_requests(tokenizer, turns: list[Turn]) -> list[ScoreRequest]:
    """Teacher, student and contrastive-baseline requests of every turn, as the teacher actor builds them."""
    reqs = []
    for turn in turns:
        ex = build_example(
            tokenizer,
            turn,
            template=TEMPLATE,
            max_context_tokens=1024,
            max_reply_tokens=512,
            reference_followup="Thanks, that's helpful.",
        )
        reqs += [
            ScoreRequest(ex.teacher_prompt_ids, ex.target_ids),
            ScoreRequest(ex.student_prompt_ids, ex.target_ids),
            ScoreRequest(ex.baseline_prompt_ids, ex.target_ids),
        ]
    return reqs


def assert_logp_close(got, ref, tol):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.logp_T.dtype == np.float32 and g.logp_T.shape == r.logp_T.shape
        np.testing.assert_allclose(g.logp_T, r.logp_T, atol=tol, rtol=0)


# ---- scoring ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("turns", [SINGLE, MULTI, uneven_batch()], ids=["single-turn", "multi-turn", "uneven-batch"])
def test_prompt_logprobs_match_hf(engine, hf, turns):
    reqs = score_requests(hf.tokenizer, turns)
    assert len({len(r.prompt_ids) + len(r.target_ids) for r in reqs}) > 1 or len(turns) == 1
    got = engine.score(reqs, top_k=K)
    ref = hf.score(reqs, top_k=K + 1)  # one more rank to know whether rank K is tied with rank K+1
    assert_logp_close(got, ref, LOGP_TOL)
    checked = total = 0
    for g, r in zip(got, ref):
        T = len(r.logp_T)
        assert g.topk_ids_T_K.shape == (T, K) and g.topk_ids_T_K.dtype == np.int64
        assert g.topk_logp_T_K.shape == (T, K) and g.topk_logp_T_K.dtype == np.float32
        np.testing.assert_allclose(g.topk_logp_T_K, r.topk_logp_T_K[:, :K], atol=LOGP_TOL, rtol=0)
        assert (np.diff(g.topk_logp_T_K, axis=1) <= 0).all(), "top-k must be sorted, most likely first"
        lp = r.topk_logp_T_K
        for t in range(T):
            for j in range(K):  # compare ids only where the rank is unambiguous (no near-tie on either side)
                total += 1
                if (j == 0 or lp[t, j - 1] - lp[t, j] > 10 * LOGP_TOL) and lp[t, j] - lp[t, j + 1] > 10 * LOGP_TOL:
                    checked += 1
                    assert g.topk_ids_T_K[t, j] == r.topk_ids_T_K[t, j], (t, j)
    assert checked > 0.5 * total  # the random tiny model has near-ties, but most ranks are clear


def test_score_contract(engine, hf):
    reqs = score_requests(hf.tokenizer, SINGLE)
    plain = engine.score(reqs)  # top_k=0: log-probs only
    assert all(s.topk_ids_T_K is None and s.topk_logp_T_K is None for s in plain)
    with_k = engine.score(reqs, top_k=3)
    for a, b in zip(plain, with_k):
        np.testing.assert_array_equal(a.logp_T, b.logp_T)
        # the actual token's log-prob is always there, and never above the best teacher entry
        assert (b.logp_T <= b.topk_logp_T_K[:, 0] + 1e-6).all()
    with pytest.raises(ValueError, match="max_logprobs"):
        engine.score(reqs, top_k=21)
    with pytest.raises(ValueError):
        engine.score([ScoreRequest([1, 2], [])])
    assert engine.score([]) == []


def test_concurrent_callers_get_the_same_scores(engine, hf):
    reqs = score_requests(hf.tokenizer, uneven_batch())
    serial = engine.score(reqs, top_k=K)
    results: dict[int, list] = {}

    def work(i):
        results[i] = engine.score(reqs[i::3], top_k=K) if i < 3 else engine.generate(
            [reqs[0].prompt_ids], SamplingParams(max_tokens=4, temperature=0)
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(3):
        for got, ref in zip(results[i], serial[i::3]):
            np.testing.assert_allclose(got.logp_T, ref.logp_T, atol=1e-6, rtol=0)
            np.testing.assert_array_equal(got.topk_ids_T_K, ref.topk_ids_T_K)
    assert len(results[3]) == 1


# ---- generation ---------------------------------------------------------------------------------------------------
def chat_prompts(tokenizer) -> list[list[int]]:
    return [render_prompt(tokenizer, t.context) for t in SINGLE + MULTI + uneven_batch()[:4]]


def check_generations(gens, prompts, hf, eos, params):
    scored = hf.score([ScoreRequest(p, g.token_ids) for p, g in zip(prompts, gens) if g.token_ids])
    nonempty = [g for g in gens if g.token_ids]
    for g, s in zip(nonempty, scored):
        np.testing.assert_allclose(np.array(g.logprobs, dtype=np.float32), s.logp_T, atol=1e-3, rtol=0)
    for p, g in zip(prompts, gens):
        assert len(g.logprobs) == len(g.token_ids)
        assert eos not in g.token_ids
        assert g.prompt_tokens == len(p)
        assert g.text == hf.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        if not g.finished:
            assert len(g.token_ids) == params.max_tokens and g.finish_reason == "length"


def test_generate_sampled_and_greedy(engine, hf):
    prompts = chat_prompts(hf.tokenizer)
    eos = hf.tokenizer.eos_token_id
    sampled = SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=7)  # logprobs stay raw (T=1, no top-p)
    gens = engine.generate(prompts, sampled)
    assert len(gens) == len(prompts)
    check_generations(gens, prompts, hf, eos, sampled)
    again = engine.generate(prompts, sampled)  # per-request seed: reproducible
    assert [g.token_ids for g in again] == [g.token_ids for g in gens]
    # prompt i is drawn with seed + i: a repeated prompt gives distinct samples, each reproducible on its own
    twice = engine.generate([prompts[0], prompts[0]], SamplingParams(max_tokens=12, temperature=1.0, seed=11))
    assert twice[0].token_ids != twice[1].token_ids
    alone = engine.generate([prompts[0]], SamplingParams(max_tokens=12, temperature=1.0, seed=12))
    assert alone[0].token_ids == twice[1].token_ids
    greedy = SamplingParams(max_tokens=10, temperature=0.0)
    gens = engine.generate(prompts, greedy)
    check_generations(gens, prompts, hf, eos, greedy)
    assert all(g.version == engine.version for g in gens)
    # greedy = argmax of the same log-probs HF computes: the first token is HF's top-1 unless nearly tied
    first = hf.score([ScoreRequest(p, g.token_ids[:1]) for p, g in zip(prompts, gens)], top_k=2)
    for g, s in zip(gens, first):
        if s.topk_logp_T_K[0, 0] - s.topk_logp_T_K[0, 1] > 1e-3:
            assert g.token_ids[0] == s.topk_ids_T_K[0, 0]
    assert engine.generate([], greedy) == []


def test_generate_stop_string_trims_reply(engine, hf):
    prompt = chat_prompts(hf.tokenizer)[0]
    free = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0))[0]
    assert len(free.text) > 3
    stop = free.text[len(free.text) // 2 :][:2]
    cut = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0, stop=[stop]))[0]
    assert cut.finished and stop not in cut.text
    assert free.text.startswith(cut.text) and len(cut.text) <= free.text.find(stop)
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)] and len(cut.logprobs) == len(cut.token_ids)


def test_penalties_and_top_logprobs_match_hf(engine, hf):
    """OpenAI's presence / frequency penalties and top log-probs on vLLM: each greedy id is the argmax of HF's logits
    minus the penalties of the ids before it (unless nearly tied); the top log-probs are HF's top-k, raw."""
    prompts = chat_prompts(hf.tokenizer)[:4]
    presence, frequency = 0.5, 1.0
    params = SamplingParams(max_tokens=12, temperature=0.0, presence_penalty=presence, frequency_penalty=frequency,
                            top_logprobs=K)
    gens = engine.generate(prompts, params)
    plain = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0))
    assert any(g.token_ids != p.token_ids for g, p in zip(gens, plain))  # the penalties changed some reply
    check_generations(gens, prompts, hf, hf.tokenizer.eos_token_id, params)  # log-probs stay raw
    scored = hf.score([ScoreRequest(p, g.token_ids) for p, g in zip(prompts, gens)], top_k=K)
    for prompt, gen, s in zip(prompts, gens, scored):
        with torch.no_grad():
            logits = hf.model(torch.tensor([prompt + gen.token_ids])).logits[0, len(prompt) - 1 : -1].float()
        for t, tok in enumerate(gen.token_ids):
            counts = torch.bincount(torch.tensor(gen.token_ids[:t], dtype=torch.long), minlength=logits.shape[1])
            best = (logits[t] - frequency * counts - presence * (counts > 0).float()).topk(2)
            if best.values[0] - best.values[1] > 1e-3:
                assert tok == int(best.indices[0]), t
        lps = np.array([[lp for _, lp in row] for row in gen.top_logprobs], dtype=np.float32)
        assert lps.shape == (len(gen.token_ids), K)
        np.testing.assert_allclose(lps, s.topk_logp_T_K, atol=1e-3, rtol=0)
        ids = np.array([[t for t, _ in row] for row in gen.top_logprobs])
        apart = np.abs(np.diff(s.topk_logp_T_K, axis=1)) > 1e-3  # ranks k and k+1 clearly apart
        edge = np.ones((len(ids), 1), bool)
        clear = np.concatenate([apart, edge], 1) & np.concatenate([edge, apart], 1)  # apart from both neighbours
        assert (ids[clear] == s.topk_ids_T_K[clear]).all()


# ---- full weights -------------------------------------------------------------------------------------------------
def perturbed(base_state: dict, seed: int, scale: float = 0.02) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
    out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied in this model, as in a real state dict
    return out


def full(state: dict, version: int) -> WeightSet:
    return WeightSet(PolicyVersion("base", version), "full", state)


def test_full_reload_matches_hf_and_rejects_corrupt_sets(engine, hf, tiny_model_dir, base_state):
    reqs = score_requests(hf.tokenizer, SINGLE + MULTI)
    before = engine.score(reqs, top_k=K)
    # vLLM's prefix cache keeps whole KV blocks (128 tokens on CPU): a long prompt, so that at least one block is cached
    long_context = [{"role": "user", "content": " ".join(["Alice reads a good book in the morning."] * 30)}]
    prompts = chat_prompts(hf.tokenizer) + [render_prompt(hf.tokenizer, long_context)]
    assert len(prompts[-1]) > 2 * 128
    engine.generate(prompts, SamplingParams(max_tokens=4, temperature=0.0))  # these prompts' KV is now prefix-cached
    start = engine.version.version
    new = perturbed(base_state, seed=1)
    hf_new = HFEngine(tiny_model_dir)
    try:
        engine.load_weights(full(new, start + 1))
        hf_new.load_weights(full(new, start + 1))
        assert engine.version == PolicyVersion("base", start + 1)
        after = engine.score(reqs, top_k=K)
        assert_logp_close(after, hf_new.score(reqs, top_k=K), LOGP_TOL)
        assert max(np.abs(a.logp_T - b.logp_T).max() for a, b in zip(after, before)) > 1e-2  # weights did change

        # stale prefix-cache KV (computed with the old weights) would show up here as log-prob mismatches
        gens = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=1.0, seed=3))
        check_generations(gens, prompts, hf_new, hf.tokenizer.eos_token_id, SamplingParams(max_tokens=8))

        key = "model.layers.0.self_attn.q_proj.weight"
        corrupt = {
            "wrong shape": {**new, key: new[key][:-1]},
            "unknown name": {**new, "model.layers.9.self_attn.q_proj.weight": new[key]},
            "NaN": {**new, key: torch.full_like(new[key], float("nan"))},
            "missing tensor": {k: v for k, v in new.items() if k != key},
            "untied lm_head": {**new, "lm_head.weight": new["lm_head.weight"] + 1.0},
            "integer tensor": {**new, key: new[key].to(torch.int64)},
        }
        for what, state in corrupt.items():
            with pytest.raises(WeightLoadError):
                engine.load_weights(full(state, start + 2))
            assert engine.version == PolicyVersion("base", start + 1), what
            assert_logp_close(engine.score(reqs, top_k=K), after, 1e-6)

        omitted = {k: v for k, v in new.items() if k != "lm_head.weight"}  # a tied alias may be left out
        engine.load_weights(full(omitted, start + 3))
        assert_logp_close(engine.score(reqs), after, 1e-6)
    finally:
        engine.load_weights(full(base_state, start + 4))
    assert_logp_close(engine.score(reqs, top_k=K), before, 1e-6)


def test_reply_ends_on_eos_without_returning_it(engine, hf, tiny_model_dir, base_state):
    """A model made to favour EOS: generation stops on its own, ids/logprobs exclude EOS, text has no control token."""
    eos = hf.tokenizer.eos_token_id
    prompts = chat_prompts(hf.tokenizer)
    # The random tiny model practically never samples EOS. Point EOS's (tied) output row along the mean final hidden
    # state of its own greedy replies: EOS then wins after a few tokens (scale tuned so replies are 1-20 tokens long).
    hidden = []
    with torch.no_grad():
        for p, g in zip(prompts, hf.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0))):
            out = hf.model(torch.tensor([p + g.token_ids]), output_hidden_states=True)
            hidden.append(out.hidden_states[-1][0, len(p) :])
    u = torch.cat(hidden).mean(0)
    emb = base_state["model.embed_tokens.weight"].clone()
    emb[eos] = 0.75 * emb.norm(dim=-1).mean() * u / u.norm()
    state = {**base_state, "model.embed_tokens.weight": emb, "lm_head.weight": emb}
    start = engine.version.version
    hf_eos = HFEngine(tiny_model_dir)
    hf_eos.load_weights(full(state, 1))
    try:
        engine.load_weights(full(state, start + 1))
        params = SamplingParams(max_tokens=24, temperature=0.0)
        gens = engine.generate(prompts, params)
        assert any(g.finished and g.token_ids for g in gens), [(len(g.token_ids), g.finished) for g in gens]
        check_generations(gens, prompts, hf_eos, eos, params)
        for g, ref in zip(gens, hf_eos.generate(prompts, params)):
            assert g.finished == ref.finished and g.token_ids == ref.token_ids
    finally:
        engine.load_weights(full(base_state, start + 2))


# ---- LoRA ---------------------------------------------------------------------------------------------------------
def lora_set(tiny_model_dir, version: int, seed: int, r: int = 4) -> WeightSet:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    cfg = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: make the adapter actually change the model
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    return WeightSet(PolicyVersion("base", version), "lora", tensors, lora_config=cfg.to_dict())


def test_lora_switch_matches_peft_and_rejects_corrupt_sets(lora_engine, tiny_model_dir, hf):
    reqs = score_requests(hf.tokenizer, SINGLE + uneven_batch()[:4])
    base_scores = lora_engine.score(reqs, top_k=K)
    assert_logp_close(base_scores, hf.score(reqs), LOGP_TOL)  # LoRA-enabled engine without an adapter = base model

    first = lora_set(tiny_model_dir, version=1, seed=0)
    peft_engine = HFEngine(tiny_model_dir)
    peft_engine.load_weights(first)
    lora_engine.load_weights(first)
    assert lora_engine.version.version == 1
    got = lora_engine.score(reqs, top_k=K)
    ref = peft_engine.score(reqs, top_k=K)
    assert_logp_close(got, ref, 1e-3)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g.topk_logp_T_K, r.topk_logp_T_K, atol=1e-3, rtol=0)
    assert max(np.abs(a.logp_T - b.logp_T).max() for a, b in zip(got, base_scores)) > 1e-2

    prompts = chat_prompts(hf.tokenizer)
    gens = lora_engine.generate(prompts, SamplingParams(max_tokens=8, temperature=1.0, seed=5))
    check_generations(gens, prompts, peft_engine, hf.tokenizer.eos_token_id, SamplingParams(max_tokens=8))

    # a second version replaces the first; its adapter folder is the only one left
    second = lora_set(tiny_model_dir, version=2, seed=1)
    lora_engine.load_weights(second)
    peft_engine.load_weights(second)
    got2 = lora_engine.score(reqs, top_k=K)
    assert_logp_close(got2, peft_engine.score(reqs), 1e-3)
    assert len(os.listdir(lora_engine._lora_root)) == 1

    key = next(k for k in second.tensors if "lora_A" in k)
    bad = {
        "wrong shape": {**second.tensors, key: second.tensors[key][:-1]},
        "unknown name": {**second.tensors, key.replace("layers.0", "layers.7"): second.tensors[key]},
        "NaN": {**second.tensors, key: torch.full_like(second.tensors[key], float("nan"))},
        "missing tensor": {k: v for k, v in second.tensors.items() if k != key},
    }
    for what, tensors in bad.items():
        with pytest.raises(WeightLoadError):
            lora_engine.load_weights(WeightSet(PolicyVersion("base", 3), "lora", tensors, second.lora_config))
        assert lora_engine.version.version == 2, what
        assert_logp_close(lora_engine.score(reqs), got2, 1e-6)
    with pytest.raises(WeightLoadError):  # adapters on the output head are refused (vLLM prompt-logprob bug)
        lm_head_cfg = {**second.lora_config, "target_modules": ["lm_head"]}
        lora_engine.load_weights(WeightSet(PolicyVersion("base", 3), "lora", {}, lm_head_cfg))
    with pytest.raises(WeightLoadError):
        lora_engine.load_weights(WeightSet(PolicyVersion("base", 3), "lora", second.tensors, None))
    assert len(os.listdir(lora_engine._lora_root)) == 1


def test_lora_set_needs_a_lora_engine(engine, tiny_model_dir):
    version = engine.version
    with pytest.raises(WeightLoadError, match="enable_lora"):
        engine.load_weights(lora_set(tiny_model_dir, version=99, seed=0))
    assert engine.version == version


# ---- factory ------------------------------------------------------------------------------------------------------
def test_factory_imports_vllm_lazily(tiny_model_dir):
    code = (
        "import sys; from hsd_ray.engines.factory import make_engine; from hsd_ray.config import EngineConfig; "
        f"e = make_engine({str(tiny_model_dir)!r}, EngineConfig(kind='hf')); "
        "assert type(e).__name__ == 'HFEngine'; assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- the real chat model ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_generates_a_coherent_reply_and_scores_like_hf():
    from hsd_ray.engines.vllm import VLLMEngine
    from hsd_ray.models import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct")
    eng = VLLMEngine(model_dir, kv_cache_bytes=256 * 2**20)
    try:
        tok = eng.tokenizer
        prompt = render_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
        gen = eng.generate([prompt], SamplingParams(max_tokens=48, temperature=0.0))[0]
        assert "Paris" in gen.text, gen.text
        assert gen.finished and gen.token_ids and gen.token_ids[-1] != tok.eos_token_id
        assert "<|im_end|>" not in gen.text

        ref = HFEngine(model_dir)
        reqs = [ScoreRequest(prompt, gen.token_ids + [tok.eos_token_id])]
        reqs += score_requests(tok, SINGLE + MULTI)
        got, want = eng.score(reqs, top_k=5), ref.score(reqs, top_k=5)
        assert_logp_close(got, want, 1e-3)
        np.testing.assert_allclose(
            np.array(gen.logprobs, dtype=np.float32), want[0].logp_T[:-1], atol=1e-3, rtol=0
        )
    finally:
        eng.close()


def test_async_stream_adds_up_to_the_reply_also_when_cut_inside_a_character(tiny_model_dir):
    """The streamed deltas' text equals the reply's decoded text, also when max_tokens cuts a reply inside a
    multi-byte character (vLLM's detokenizer holds those bytes back; the decoded reply ends in U+FFFD): else the
    streamed reply differs from the non-streamed one and its follow-up cannot be matched for capture."""
    import asyncio

    from hsd_ray.core.engine_api import Generation
    from hsd_ray.engines.vllm_async import AsyncVLLMEngine

    eng = make_engine(tiny_model_dir, EngineConfig(kind="vllm"), serving=True)
    assert isinstance(eng, AsyncVLLMEngine)
    prompts = [render_prompt(eng.tokenizer, [{"role": "user", "content": f"Emojis please 🐱 {i}"}]) for i in range(8)]

    async def one(prompt, seed):
        streamed, gen = "", None
        async for item in eng.stream(prompt, SamplingParams(max_tokens=1 + seed % 6, temperature=1.0, seed=seed)):
            if isinstance(item, Generation):
                gen = item
            else:
                streamed += item.text
        return streamed, gen

    async def run():
        return await asyncio.gather(*(one(prompts[s % 8], s) for s in range(96)))

    try:
        results = asyncio.run(run())
    finally:
        eng.close()
    assert [s for s, _ in results] == [g.text for _, g in results]
    cut = [g for _, g in results if g.text.endswith("\ufffd") and g.finish_reason == "length"]
    assert cut, "no reply was cut inside a character: the case is not exercised"

