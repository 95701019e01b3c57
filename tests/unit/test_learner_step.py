"""Learner steps on a fixed set of turns move the student toward the hindsight teacher (full fine-tune and LoRA)."""

import copy

import pytest
import torch

from hsd_ray.config import Config
from hsd_ray.core import losses
from hsd_ray.core.batch import HindsightBatch, pack_sequences, reply_logits
from hsd_ray.core.policy import ReferencePolicy, apply_lora, export_weights, make_optimizer
from hsd_ray.core.scoring import score_turns
from hsd_ray.core.train_step import learner_step
from hsd_ray.core.turns import Turn
from hsd_ray.engines.hf import HFEngine

pytestmark = pytest.mark.unit

TURNS = [
    ("What is the capital of France?", "The capital of France is Paris, a city on the Seine.", "Too long, one word."),
    ("Name a color.", "Blue is a color that many people like a lot.", "Just the color please."),
    ("How are you?", "I am fine thank you, how about you today?", "Say it in lowercase."),
]


def _turns():
    return [Turn(context=[{"role": "user", "content": q}], reply=r, followup=o) for q, r, o in TURNS]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir)


def _teacher_logits(engine, turns, cfg):
    """Frozen hindsight-teacher logits aligned with the student batch's target positions."""
    from hsd_ray.core.hindsight import build_example
    from hsd_ray.core.prompts import template_text

    h = cfg.hindsight
    ex = [
        build_example(engine.tokenizer, t, template=template_text(h.template), max_context_tokens=h.max_context_tokens,
                      max_reply_tokens=h.max_reply_tokens)
        for t in turns
    ]
    packed = pack_sequences([e.teacher_prompt_ids for e in ex], [e.target_ids for e in ex], engine.tokenizer.pad_token_id)
    with torch.no_grad():
        return reply_logits(engine.model, packed).float()


def _exact_kl(model, batch, teacher_logits):
    with torch.no_grad():
        student = reply_logits(model, batch.packed).float()
    return float(losses.exact_divergence(student, teacher_logits, batch.mask_B_T, "reverse_kl", 0.5))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("loss", [["loss.kind=sampled_token", "loss.head_tokens=0", "loss.shift_peak_ratio=0"],
                                  ["loss.kind=topk"], ["loss.kind=shifted_topk"],
                                  ["loss.kind=sampled_token", "loss.head_tokens=2", "loss.shift_peak_ratio=0"],
                                  ["loss.kind=sampled_token", "loss.head_tokens=0", "loss.shift_peak_ratio=2",
                                   "loss.shift_peaks_to=any"]],
                         ids=["sampled_token", "topk", "shifted_topk", "shifted_head", "shifted_peaks"])
def test_self_distillation_lowers_kl_to_hindsight_teacher(engine, lora, loss):
    """As in the paper the teacher is the *current* policy: each step re-scores the turns with the weights being
    trained, then steps. The exact mean KL(student ‖ hindsight teacher) over the reply tokens must fall."""
    cfg = Config.load(overrides=[
        *loss, "loss.baseline=student", "loss.center_advantages=false", "loss.top_k=100",
        "loss.kl_coef=0", "hindsight.template=online", f"learner.lr={3e-3 if lora else 1e-3}", "learner.warmup_steps=0", "learner.lora.r=8",
    ])
    torch.manual_seed(0)
    model = copy.deepcopy(engine.model)
    if lora:
        model = apply_lora(model, cfg.learner.lora)
    optimizer, scheduler = make_optimizer(model, cfg.learner)
    scorer = copy.copy(engine)  # same tokenizer and lock, scoring with the model being trained
    scorer.model = model
    kls = []
    for _ in range(9):
        model.eval()
        turns = score_turns(scorer, _turns(), cfg.hindsight, cfg.loss)
        batch = HindsightBatch.collate(turns, engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
        kls.append(_exact_kl(model, batch, _teacher_logits(scorer, turns, cfg)))
        m = learner_step(model, optimizer, batch, cfg.loss, grad_clip=10.0, scheduler=scheduler)
        assert torch.isfinite(torch.tensor(m["loss"])) and m["tokens"] == batch.num_tokens
        if cfg.loss.shifted_head and cfg.loss.shift_peak_ratio:  # the peaks shift: counted beside the (absent) head
            assert 0 < m["peak_tokens"] == m["head_tokens"] < m["tokens"]
    assert kls[-1] < 0.5 * kls[0], kls
    if lora:  # only the adapter moved: base weights untouched
        base = dict(engine.model.named_parameters())
        for name, p in model.get_base_model().named_parameters():
            if "lora_" not in name and name in base:
                assert torch.equal(p, base[name])


def test_kl_penalty_anchors_to_initial_policy(engine):
    cfg = Config.load(overrides=["loss.baseline=student", "loss.center_advantages=false", "learner.lr=2e-3",
                                 "learner.warmup_steps=0"])
    turns = score_turns(engine, _turns(), cfg.hindsight, cfg.loss)
    batch = HindsightBatch.collate(turns, engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    drift = {}
    for coef in (0.0, 5.0):
        torch.manual_seed(0)
        model = copy.deepcopy(engine.model)
        opt, sch = make_optimizer(model, cfg.learner)
        loss_cfg = cfg.loss.model_copy(update={"kl_coef": coef})
        ref = ReferencePolicy(model, "initial")
        for _ in range(6):
            learner_step(model, opt, batch, loss_cfg, grad_clip=10.0, scheduler=sch, reference=ref)
        with torch.no_grad():
            now = losses.token_logprobs(reply_logits(model, batch.packed), batch.packed.target_ids_B_T)
            then = losses.token_logprobs(reply_logits(engine.model, batch.packed), batch.packed.target_ids_B_T)
        drift[coef] = float((now - then).abs()[batch.mask_B_T].mean())
    assert drift[5.0] < drift[0.0]


def test_export_weights_full_and_lora(engine):
    from hsd_ray.config import LoraConfig

    full = export_weights(copy.deepcopy(engine.model), version=3, step=7)
    assert full.kind == "full" and full.version.version == 3 and full.version.step == 7
    # the tiny model ties lm_head to the embedding (as SmolLM2 does): the shared tensor travels once
    assert set(full.tensors) == set(engine.model.state_dict()) - {"lm_head.weight"}
    lora = export_weights(apply_lora(copy.deepcopy(engine.model), LoraConfig(r=4)), version=1, step=1)
    assert lora.kind == "lora" and all("lora_" in k for k in lora.tensors) and lora.lora_config["r"] == 4
    assert lora.num_bytes() < full.num_bytes() / 5


def test_full_weights_round_trip_keeps_lm_head_tied(engine, tiny_model_dir):
    """An exported set (no lm_head) loads into a fresh engine whose lm_head follows the new embedding; a set that
    unties them is rejected and the engine keeps serving what it had."""
    from hsd_ray.core.weights import PolicyVersion, WeightLoadError, WeightSet
    from hsd_ray.engines.hf import HFEngine

    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.5)
    ws = export_weights(model, version=1, step=1)
    fresh = HFEngine(tiny_model_dir)
    fresh.load_weights(ws)
    assert fresh.version.version == 1
    assert torch.equal(fresh.model.lm_head.weight, model.get_input_embeddings().weight)
    state = fresh.model.state_dict()
    untied = dict(ws.tensors, **{"lm_head.weight": ws.tensors["model.embed_tokens.weight"] + 1.0})
    with pytest.raises(WeightLoadError, match="tied"):
        fresh.load_weights(WeightSet(PolicyVersion("base", 2), "full", untied))
    assert fresh.version.version == 1
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in state.items())
    tied = dict(ws.tensors, **{"lm_head.weight": ws.tensors["model.embed_tokens.weight"]})
    fresh.load_weights(WeightSet(PolicyVersion("base", 3), "full", tied))  # sending the alias is fine too
    assert fresh.version.version == 3


def test_hf_generate_seeds_prompt_i_with_seed_plus_i(engine):
    from hsd_ray.core.prompts import render_prompt
    from hsd_ray.core.engine_api import SamplingParams

    prompt = render_prompt(engine.tokenizer, [{"role": "user", "content": "Tell me a story."}])
    twice = engine.generate([prompt, prompt], SamplingParams(max_tokens=12, temperature=1.0, seed=11))
    assert twice[0].token_ids != twice[1].token_ids
    alone = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=1.0, seed=12))
    assert alone[0].token_ids == twice[1].token_ids


def test_zeroed_weight_set_keeps_names_shapes_and_lora_config_under_the_new_version():
    from hsd_ray.core.weights import PolicyVersion, WeightSet

    lora = WeightSet(PolicyVersion("user-a", 7), "lora", {"x.lora_A.weight": torch.ones(2, 3),
                                                          "x.lora_B.weight": torch.full((3, 2), 0.5)}, {"r": 2})
    zero = lora.zeroed(PolicyVersion("base", 0))
    assert zero.version == PolicyVersion("base", 0) and zero.kind == "lora" and zero.lora_config == {"r": 2}
    assert {k: tuple(t.shape) for k, t in zero.tensors.items()} == {"x.lora_A.weight": (2, 3), "x.lora_B.weight": (3, 2)}
    assert all(not t.any() for t in zero.tensors.values()) and lora.tensors["x.lora_A.weight"].all()  # a copy


def test_repeat_unlikelihood_adds_its_weighted_term_on_replies_that_repeat(engine):
    """`loss.repeat_unlikelihood` w adds w · repetition_unlikelihood to the loss, read on the reply's own repeated
    4-grams: present in a reply that loops, absent from one that does not."""
    from hsd_ray.core.train_step import compute_loss

    looping = Turn(context=[{"role": "user", "content": "Give me tips."}],
                   reply="1. Use a bike's brakes.\n2. Use a bike's brakes.\n3. Use a bike's brakes.", followup="Ok.")
    off = Config.load(overrides=["loss.kl_coef=0", "loss.repeat_unlikelihood=0"])
    on = Config.load(overrides=["loss.kl_coef=0", "loss.repeat_unlikelihood=2"])
    batch = HindsightBatch.collate(score_turns(engine, [looping, *_turns()], off.hindsight, off.loss),
                                   engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    with torch.no_grad():
        base, _ = compute_loss(engine.model, batch, off.loss)
        both, m = compute_loss(engine.model, batch, on.loss)
    assert m["repeat_frac"] > 0.1 and m["repeat_ul"] > 0
    assert float(both) == pytest.approx(float(base) + 2 * m["repeat_ul"], rel=1e-5)
    plain = HindsightBatch.collate(score_turns(engine, _turns(), off.hindsight, off.loss),
                                  engine.tokenizer.pad_token_id, (engine.tokenizer.eos_token_id,))
    with torch.no_grad():
        _, m = compute_loss(engine.model, plain, on.loss)
    assert m["repeat_frac"] == 0.0 and m["repeat_ul"] == 0.0


def test_shift_peaks_to_end_keeps_only_the_peaks_where_a_stop_id_rises_most(engine):
    """`loss.shift_peaks_to=end` shifts the advantage peaks at which the batch's stop ids rise most over the baseline
    and no other; given every id that rises most at a peak as its stop ids it shifts them all, and a batch collated
    without stop ids is refused rather than trained without its peaks."""
    from hsd_ray.core import shift_positions
    from hsd_ray.core.train_step import compute_loss

    peaks_cfg = ["loss.head_tokens=0", "loss.shift_peak_ratio=1.5", "loss.kl_coef=0"]
    any_peak, at_end = (Config.load(overrides=[*peaks_cfg, f"loss.shift_peaks_to={to}"]).loss for to in ("any", "end"))
    turns = score_turns(engine, _turns(), Config.load(overrides=peaks_cfg).hindsight, any_peak)
    pad, eos = engine.tokenizer.pad_token_id, engine.tokenizer.eos_token_id
    batch = HindsightBatch.collate(turns, pad, (eos,))
    mask = batch.mask_B_T.bool()
    peaks = shift_positions.advantage_peaks(batch.teacher_logp_B_T, batch.baseline_logp_B_T, mask, 1.5)
    topk = (batch.topk_ids_B_T_K, batch.topk_logp_B_T_K, batch.baseline_topk_logp_B_T_K)
    risen = topk[0].gather(-1, (topk[1] - topk[2]).argmax(-1, keepdim=True)).squeeze(-1)[peaks]
    assert len(set(risen.tolist())) > 1  # the peaks raise different ids: the filter has something to choose
    with torch.no_grad():
        n_any = compute_loss(engine.model, batch, any_peak)[1]["peak_tokens"]
        n_end = compute_loss(engine.model, batch, at_end)[1]["peak_tokens"]
        every = HindsightBatch.collate(turns, pad, tuple(set(risen.tolist())))
        assert compute_loss(engine.model, every, at_end)[1]["peak_tokens"] == n_any == int(peaks.sum()) > 0
    assert n_end == int((peaks & shift_positions.raised_most_is(*topk, mask, (eos,))).sum()) < n_any
    with pytest.raises(ValueError, match="stop ids"):
        compute_loss(engine.model, HindsightBatch.collate(turns, pad, ()), at_end)
