"""The retain anchor (core/retain.py): its prompts, its loss, its replies, and what it does to a learner step."""

import copy
import json
import re

import pytest
import torch

from hsd_ray.config import Config
from hsd_ray.core.batch import HindsightBatch, pack_sequences, reply_logits
from hsd_ray.core.policy import ReferencePolicy, make_optimizer
from hsd_ray.core.retain import RetainSet, build_retain_set, greedy_replies, retain_loss
from hsd_ray.core.scoring import score_turns
from hsd_ray.core.train_step import learner_step
from hsd_ray.core.turns import Turn
from hsd_ray.data import load_probes, load_retain_prompts
from hsd_ray.engines.hf import HFEngine

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir)


def _numbers(text: str) -> frozenset:
    return frozenset(int(n) for n in re.findall(r"\d+", text))


def test_retain_prompts_share_no_prompt_or_fact_with_the_benchmark_or_the_version_gate():
    """Training to keep a fact the benchmark measures would make its capability numbers meaningless."""
    from bench.learning.facts import CAPITALS, YES_NO_FAMILIES
    from bench.learning.prompts import OPEN_TEMPLATES, TOPICS, all_checkable

    retain = load_retain_prompts()
    assert len(retain) == len(set(retain)) >= 40
    checkable = all_checkable()
    probes = load_probes()
    elsewhere = ({p.question for p in checkable} | {t.format(t=x) for t in OPEN_TEMPLATES for x in TOPICS}
                 | {q for family in YES_NO_FAMILIES.values() for q, _ in family}
                 | set(probes["probes"]) | {c["prompt"] for c in probes["checkable"]})
    assert not set(retain) & elsewhere
    names = [c for c, _, _ in CAPITALS] + [n for _, names, _ in CAPITALS for n in names]
    for prompt in retain:
        for name in names:
            assert not re.search(rf"\b{re.escape(name)}\b", prompt), (prompt, name)
    # the benchmark's arithmetic and unit facts, by their operands: none is asked again in other words
    facts = {_numbers(p.question) for p in checkable if p.kind != "capital"}
    facts |= {_numbers(c["prompt"]) for c in probes["checkable"] if _numbers(c["prompt"])}
    assert not [p for p in retain if _numbers(p) and _numbers(p) in facts]
    topics = [t.lower() for t in TOPICS]
    assert not [p for p in retain if any(t in p.lower() for t in topics)]


def test_retain_prompts_from_a_file_are_checked(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"prompts": ["What is 2 + 2?"]}))
    bad.write_text(json.dumps({"prompts": ["ok", " "]}))
    assert load_retain_prompts(str(good)) == ["What is 2 + 2?"]
    with pytest.raises(ValueError, match="prompts"):
        load_retain_prompts(str(bad))


def _packed(engine):
    tok = engine.tokenizer
    prompts = [tok("a b c d", add_special_tokens=False)["input_ids"], tok("e f", add_special_tokens=False)["input_ids"]]
    replies = [tok(t, add_special_tokens=False)["input_ids"] for t in ("g h i", "j k l m n")]
    return pack_sequences(prompts, replies, tok.pad_token_id)


def test_retain_loss_is_the_exact_forward_kl_and_zero_at_the_reference(engine):
    torch.manual_seed(0)
    model = copy.deepcopy(engine.model)
    reference = ReferencePolicy(model)
    packed = _packed(engine)
    at_start = retain_loss(model, reference, packed)[0].detach()
    assert abs(float(at_start)) < 1e-6
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss, metrics = retain_loss(model, reference, packed)
    with torch.no_grad(), reference.model() as ref:
        lt = torch.log_softmax(reply_logits(ref, packed).float(), -1)
        ls = torch.log_softmax(reply_logits(model, packed).float(), -1)
    per_token = (lt.exp() * (lt - ls)).sum(-1)
    mask = packed.target_mask_B_T
    expected = torch.stack([per_token[b][mask[b]].mean() for b in range(mask.shape[0])]).mean()
    assert float(loss.detach()) > 1e-3 and metrics["kl_retain"] == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with reference.model() as ref:
        assert all(p.grad is None for p in ref.parameters())


def test_a_draw_depends_on_seed_and_step_only():
    rs = RetainSet(tuple((i, i + 1) for i in range(10)), tuple((100 + i,) for i in range(10)), pad_id=0)
    a, b, c = rs.draw(3, 4, seed=1), rs.draw(3, 4, seed=1), rs.draw(4, 4, seed=1)
    assert torch.equal(a.input_ids_B_L, b.input_ids_B_L) and not torch.equal(a.input_ids_B_L, c.input_ids_B_L)
    rows = {tuple(r.tolist()) for r in a.target_ids_B_T}
    assert len(rows) == 4 and all(r[0] >= 100 for r in rows)
    assert rs.draw(0, 50).target_ids_B_T.shape[0] == 10
    with pytest.raises(ValueError):
        RetainSet((), (), pad_id=0)


def test_batched_greedy_replies_equal_one_prompt_at_a_time_and_stop_at_eos(engine):
    tok, model = engine.tokenizer, engine.model
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("a b c d e f", "g", "h i j")]
    batched = greedy_replies(model, prompts, tok.pad_token_id, [], max_new_tokens=6)
    alone = [greedy_replies(model, [p], tok.pad_token_id, [], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone and all(len(r) == 6 for r in batched)
    stop = batched[0][2]
    cut = greedy_replies(model, prompts[:1], tok.pad_token_id, [stop], max_new_tokens=6)[0]
    assert cut == batched[0][: batched[0].index(stop) + 1]


TURNS = [
    ("Tell me a story about a dog.", "Once upon a time a dog ran far away to the sea and back home again.", "Shorter."),
    ("Describe a house.", "A house has walls, a roof, doors and windows, and people live inside it.", "Too long!"),
]


def _drift(engine, retain_coef: float) -> float:
    """KL(reference ‖ policy) on the retain replies after 6 steps of training on unrelated turns."""
    cfg = Config.load(overrides=["loss.baseline=student", "loss.kl_coef=0", f"loss.retain_coef={retain_coef}",
                                 "loss.retain_per_step=4", "learner.lr=3e-3", "learner.warmup_steps=0"])
    torch.manual_seed(0)
    model = copy.deepcopy(engine.model)
    reference = ReferencePolicy(model)
    retain = build_retain_set(reference, engine.tokenizer, ["Name a fruit.", "What is 47 + 38?", "Spell cat.",
                                                            "Who wrote Hamlet?"], max_new_tokens=8)
    optimizer, scheduler = make_optimizer(model, cfg.learner)
    turns = [Turn(context=[{"role": "user", "content": q}], reply=r, followup=o) for q, r, o in TURNS]
    tok = engine.tokenizer
    batch = HindsightBatch.collate(score_turns(engine, turns, cfg.hindsight, cfg.loss),
                                   tok.pad_token_id, (tok.eos_token_id,))
    for step in range(6):
        m = learner_step(model, optimizer, batch, cfg.loss, grad_clip=10.0, scheduler=scheduler, reference=reference,
                         retain=retain.draw(step, 4))
        assert ("kl_retain" in m) == (retain_coef > 0)
    with torch.no_grad():
        return float(retain_loss(model, reference, retain.draw(0, 4))[0])


def test_the_anchor_holds_the_retain_replies_where_training_would_move_them(engine):
    free, anchored = _drift(engine, 0.0), _drift(engine, 10.0)
    assert free > 1e-3
    assert anchored < 0.5 * free, (free, anchored)
