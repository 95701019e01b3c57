"""Per-user adapters (personalization.mode=per_user): a user's turns move that user's adapter only; adapters survive
eviction and restarts with their optimizer state; the transformers engine answers each user with their adapter."""

import copy

import pytest
import torch

from hsd_ray.config import Config, ConfigError
from hsd_ray.core.adapter_bank import AdapterBank, read_adapter
from hsd_ray.core.batch import HindsightBatch
from hsd_ray.core.engine_api import SamplingParams
from hsd_ray.core.influence import round_robin
from hsd_ray.core.policy import ReferencePolicy
from hsd_ray.core.scoring import score_turns
from hsd_ray.core.turns import Turn
from hsd_ray.core.weights import BASE_ADAPTER, WeightLoadError, is_user_adapter, user_adapter_id
from hsd_ray.engines.hf import HFEngine

pytestmark = pytest.mark.unit

ALICE, BOB = user_adapter_id("alice"), user_adapter_id("bob")


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir)


def _cfg() -> Config:
    return Config.load(overrides=["personalization.mode=per_user", "personalization.lr=1e-2", "loss.kl_coef=0.1"])


def _batch(engine, cfg, reply="Blue is a color that many people like.", followup="One word please."):
    turns = [Turn(context=[{"role": "user", "content": "Name a color."}], reply=reply, followup=followup)]
    tok = engine.tokenizer
    return HindsightBatch.collate(score_turns(engine, turns, cfg.hindsight, cfg.loss),
                                  tok.pad_token_id, (tok.eos_token_id,))


def _bank(engine, cfg, root, max_resident=8) -> AdapterBank:
    return AdapterBank(copy.deepcopy(engine.model), cfg.personalization.lora, lr=cfg.personalization.lr, root=root,
                       max_resident=max_resident)


def _step(bank, adapter, batch, cfg) -> dict:
    return bank.step(adapter, batch, cfg.loss, grad_clip=1.0, reference=ReferencePolicy(bank.model, "initial"))


def _params(bank, adapter=None) -> dict:
    """The base weights (adapter None) or one adapter's, as detached copies."""
    out = {}
    for name, p in bank.model.named_parameters():
        mine = "lora_" not in name if adapter is None else f".{adapter}." in name
        if mine:
            out[name] = p.detach().clone()
    return out


def test_user_adapter_ids_are_stable_hashes():
    assert user_adapter_id("alice") == ALICE and ALICE != BOB and is_user_adapter(ALICE)
    assert not is_user_adapter(BASE_ADAPTER) and "alice" not in ALICE and len(ALICE) == len("user-") + 16


def test_round_robin_takes_every_users_oldest_turn_first():
    users = ["busy", "busy", "busy", "busy", "quiet", "busy", "other"]
    assert round_robin(users, 3) == [0, 4, 6]  # each user's oldest before anyone's second
    assert round_robin(users, 4) == [0, 1, 4, 6]
    assert round_robin(users, 10) == list(range(7))
    assert round_robin(["a", "a"], 1) == [0]
    with pytest.raises(ValueError):
        round_robin(users, 0)


def test_a_users_step_moves_only_their_adapter(engine, tmp_path):
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    reference = ReferencePolicy(bank.model, "initial")
    batch = _batch(engine, cfg)
    bank.step(BOB, batch, cfg.loss, grad_clip=1.0, reference=reference)  # bob exists, then alice trains
    base, bob = _params(bank), _params(bank, BOB)
    alice_before = _params(bank, ALICE) if ALICE in bank.resident() else None
    for _ in range(3):
        m = bank.step(ALICE, batch, cfg.loss, grad_clip=1.0, reference=reference)
        assert torch.isfinite(torch.tensor(m["loss"]))
    assert alice_before is None and bank.steps(ALICE) == 3 and bank.steps(BOB) == 1
    assert all(torch.equal(p, _params(bank)[n]) for n, p in base.items())  # the shared policy: bit-identical
    assert all(torch.equal(p, _params(bank, BOB)[n]) for n, p in bob.items())  # bob's adapter: bit-identical
    alice = bank.export(ALICE, version=1, step=3)
    assert alice.kind == "lora" and alice.version.adapter_id == ALICE and all("lora_" in k for k in alice.tensors)
    assert any(float(t.abs().max()) > 0 for k, t in alice.tensors.items() if "lora_B" in k)  # it learned something


def test_each_adapter_moves_toward_its_own_users_hindsight_teacher(engine, tmp_path):
    """Two users, opposite follow-ups on the same reply: each adapter's exact KL to its own user's hindsight teacher
    (the shared policy shown that user's follow-up) falls; the other user's adapter is untouched by it."""
    from hsd_ray.core.batch import pack_sequences, reply_logits
    from hsd_ray.core.hindsight import build_example
    from hsd_ray.core.prompts import template_text
    from hsd_ray.core.train_step import mean_teacher_kl

    cfg = Config.load(overrides=["personalization.mode=per_user", "personalization.lr=3e-3", "loss.kl_coef=0",
                                 "loss.kind=topk", "loss.top_k=100", "loss.baseline=student"])
    torch.manual_seed(0)  # the adapters' initial A matrices
    bank = _bank(engine, cfg, tmp_path)
    batches = {ALICE: _batch(engine, cfg, followup="Too long. One word only."),
               BOB: _batch(engine, cfg, followup="Far too short, write a whole paragraph.")}

    def teacher(adapter):
        t = Turn(context=[{"role": "user", "content": "Name a color."}],
                 reply="Blue is a color that many people like.",
                 followup={ALICE: "Too long. One word only.", BOB: "Far too short, write a whole paragraph."}[adapter])
        h = cfg.hindsight
        ex = build_example(engine.tokenizer, t, template=template_text(h.template),
                           max_context_tokens=h.max_context_tokens, max_reply_tokens=h.max_reply_tokens)
        packed = pack_sequences([ex.teacher_prompt_ids], [ex.target_ids], engine.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = reply_logits(engine.model, packed).float()
        return lambda _packed: logits

    def kl(adapter, towards):
        bank._activate(adapter)
        return mean_teacher_kl(bank.model, batches[towards], teacher(towards))

    for adapter in (ALICE, BOB):
        bank._activate(adapter)
    before = {(a, t): kl(a, t) for a in (ALICE, BOB) for t in (ALICE, BOB)}
    for _ in range(24):
        _step(bank, ALICE, batches[ALICE], cfg)
    bob_before = _params(bank, BOB)
    for _ in range(24):
        _step(bank, BOB, batches[BOB], cfg)
    after = {(a, t): kl(a, t) for a in (ALICE, BOB) for t in (ALICE, BOB)}
    ratio = {a: after[a, a] / before[a, a] for a in (ALICE, BOB)}
    assert ratio[ALICE] < 0.5 and ratio[BOB] < 0.5, ratio
    assert not all(torch.equal(p, _params(bank, BOB)[n]) for n, p in bob_before.items())  # bob's own steps did move it


def test_evicted_adapters_come_back_from_disk_with_their_optimizer(engine, tmp_path):
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path, max_resident=1)
    batch = _batch(engine, cfg)
    _step(bank, ALICE, batch, cfg)
    bank.set_version(ALICE, 4)
    alice = bank.export(ALICE, 4, 1)
    opt_state = copy.deepcopy(bank._resident[ALICE]["optimizer"].state_dict()["state"])
    _step(bank, BOB, batch, cfg)  # alice is saved and dropped (one resident)
    assert bank.resident() == [BOB] and bank.on_disk() == [ALICE] and bank.version(ALICE) == 4
    on_disk = read_adapter(tmp_path / ALICE, ALICE)
    assert on_disk is not None and on_disk.version.version == 4 and on_disk.lora_config == alice.lora_config
    assert set(on_disk.tensors) == set(alice.tensors)
    assert all(torch.equal(on_disk.tensors[k], alice.tensors[k]) for k in alice.tensors)
    back = bank.export(ALICE, 5, 1)  # brought back in: same tensors, same optimizer moments, same version
    assert bank.loaded_from_disk == 1 and bank.version(ALICE) == 4 and bank.steps(ALICE) == 1
    assert all(torch.equal(back.tensors[k], alice.tensors[k]) for k in alice.tensors)
    now = bank._resident[ALICE]["optimizer"].state_dict()["state"]
    assert all(torch.equal(now[i]["exp_avg"], opt_state[i]["exp_avg"]) for i in opt_state)
    # a fresh bank (a restarted learner) finds both on disk
    again = _bank(engine, cfg, tmp_path)
    assert again.on_disk() == sorted([ALICE, BOB]) and again.version(ALICE) == 4


def test_a_rejected_adapter_rolls_back_to_its_accepted_state(engine, tmp_path):
    """Version gate on user adapters: the state snapshotted when a candidate was published is what the adapter goes
    back to — weights and AdamW moments — after a later candidate is rejected; with none accepted, back to zero."""
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    batch = _batch(engine, cfg)
    _step(bank, ALICE, batch, cfg)
    bank.set_version(ALICE, 1)
    accepted = bank.snapshot(ALICE)
    accepted_params = _params(bank, ALICE)
    _step(bank, ALICE, batch, cfg)  # the learner trains on while v1 waits for the gate
    bank.save_accepted(ALICE, accepted)  # the gate accepted v1
    _step(bank, ALICE, batch, cfg)
    bank.set_version(ALICE, 2)
    bank.save(ALICE)
    moved = _params(bank, ALICE)
    assert any(not torch.equal(moved[k], accepted_params[k]) for k in moved)
    assert bank.roll_back(ALICE) == 1  # v2 rejected
    assert bank.steps(ALICE) == 1 and bank.version(ALICE) == 1 and bank.loaded_from_disk == 1
    assert all(torch.equal(p, accepted_params[k]) for k, p in _params(bank, ALICE).items())
    now = bank._resident[ALICE]["optimizer"].state_dict()["state"]
    assert all(torch.equal(now[i]["exp_avg"], accepted.optimizer["state"][i]["exp_avg"]) for i in now)
    on_disk = read_adapter(tmp_path / ".accepted" / ALICE, ALICE)  # what a restarted registry serves
    assert on_disk.version.version == 1 and all(torch.equal(on_disk.tensors[k], accepted.tensors[k])
                                                for k in accepted.tensors)
    # bob: never accepted, so a rejection leaves no trace of his training; the accepted folder is not an adapter
    _step(bank, BOB, batch, cfg)
    bank.save(BOB)
    assert bank.roll_back(BOB) is None and not (tmp_path / BOB).exists() and bank.on_disk() == [ALICE]
    assert bank.steps(BOB) == 0 and not any(p.abs().sum() for k, p in _params(bank, BOB).items() if "lora_B" in k)
    assert bank.delete(ALICE) and not (tmp_path / ".accepted" / ALICE).exists()


def test_an_admin_rollback_restarts_the_adapter_from_a_published_version(engine, tmp_path):
    """The admin API rolled a user back to v1: the adapter's working (and accepted) state becomes v1's published
    tensors with a fresh AdamW state, and its next step starts there."""
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    batch = _batch(engine, cfg)
    _step(bank, ALICE, batch, cfg)
    v1 = bank.export(ALICE, 1, bank.steps(ALICE))
    v1_params = _params(bank, ALICE)
    for _ in range(2):
        _step(bank, ALICE, batch, cfg)
    bank.set_version(ALICE, 2)
    bank.save(ALICE)
    bank.restart_from(v1, steps=1, accepted=True)
    assert ALICE not in bank.resident() and not (tmp_path / ALICE / "optimizer.pt").exists()
    for folder in (tmp_path / ALICE, tmp_path / ".accepted" / ALICE):
        saved = read_adapter(folder, ALICE)
        assert saved.version.version == 1 and all(torch.equal(saved.tensors[k], v1.tensors[k]) for k in v1.tensors)
    assert bank.version(ALICE) == 1 and bank.steps(ALICE) == 1
    assert all(torch.equal(p, v1_params[k]) for k, p in _params(bank, ALICE).items())
    assert not bank._resident[ALICE]["optimizer"].state_dict()["state"]  # a fresh AdamW
    _step(bank, ALICE, batch, cfg)
    assert bank.steps(ALICE) == 2 and any(not torch.equal(p, v1_params[k]) for k, p in _params(bank, ALICE).items())


def test_deleting_an_adapter_removes_it_from_memory_and_disk(engine, tmp_path):
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    _step(bank, ALICE, _batch(engine, cfg), cfg)
    bank.save(ALICE)
    assert bank.delete(ALICE) and ALICE not in bank.resident() and not (tmp_path / ALICE).exists()
    assert not bank.delete(ALICE)
    assert bank.steps(ALICE) == 0  # a later turn starts a new adapter from zero


def test_engine_answers_each_user_with_their_adapter(engine, tmp_path, tiny_model_dir):
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    bank._activate(ALICE)
    with torch.no_grad():  # a visibly different adapter
        for name, p in bank.model.named_parameters():
            if f".{ALICE}." in name and "lora_B" in name:
                p.normal_(0, 0.5)
    served = HFEngine(tiny_model_dir)
    prompt, greedy = [1, 2, 3, 4], dict(max_tokens=8, temperature=0)
    base = served.generate([prompt], SamplingParams(**greedy))[0]
    served.load_weights(bank.export(ALICE, 2, 1))
    alice = served.generate([prompt], SamplingParams(**greedy, adapter_id=ALICE))[0]
    bob = served.generate([prompt], SamplingParams(**greedy, adapter_id=BOB))[0]  # no adapter yet: the shared policy
    again = served.generate([prompt], SamplingParams(**greedy))[0]
    assert alice.version.fingerprint() == f"hsd-{ALICE}-v2" and alice.token_ids != base.token_ids
    assert bob.version.fingerprint() == "hsd-base-v0" and bob.token_ids == base.token_ids
    assert again.token_ids == base.token_ids and again.logprobs == pytest.approx(base.logprobs, abs=1e-6)
    bad = bank.export(BOB, 1, 0)
    bad.tensors[next(iter(bad.tensors))] = torch.zeros(3)  # wrong shape: refused, nothing half-loaded
    with pytest.raises(WeightLoadError):
        served.load_weights(bad)
    assert set(served.user_adapters) == {ALICE} and BOB not in served.model.peft_config
    served.evict_adapter(ALICE)
    assert not served.user_adapters
    after = served.generate([prompt], SamplingParams(**greedy, adapter_id=ALICE))[0]
    assert after.version.fingerprint() == "hsd-base-v0" and after.token_ids == base.token_ids


def _shifted(engine) -> dict:
    """New shared weights (every tensor moved): what a shared version of mode both brings."""
    from hsd_ray.core.policy import export_weights

    model = copy.deepcopy(engine.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return export_weights(model, version=3, step=3)


def test_new_shared_weights_under_resident_adapters(engine, tmp_path, tiny_model_dir):
    """Mode both: the shared policy moves under every adapter, in the learner (AdapterBank.load_shared) and in a
    replica (HFEngine.load_weights of a full set with user adapters resident). Each user is then answered by exactly
    their adapter on the new shared weights, everyone else by the new shared weights."""
    cfg = _cfg()
    bank = _bank(engine, cfg, tmp_path)
    _step(bank, ALICE, _batch(engine, cfg), cfg)
    alice_before = _params(bank, ALICE)
    shared = _shifted(engine)
    bank.load_shared(shared.tensors)
    assert all(torch.equal(t, _params(bank, ALICE)[k]) for k, t in alice_before.items())  # the adapter stays
    assert set(_params(bank)) and all(
        torch.equal(p, shared.tensors[k.replace("base_model.model.", "", 1).replace(".base_layer.", ".")])
        for k, p in _params(bank).items() if "lm_head" not in k)
    with pytest.raises(WeightLoadError, match="unknown tensors"):
        bank.load_shared({"model.nope.weight": torch.zeros(1)})

    alice = bank.export(ALICE, 1, 1)
    prompt, greedy = [1, 2, 3, 4], dict(max_tokens=8, temperature=0)
    served = HFEngine(tiny_model_dir)
    served.load_weights(alice)
    served.load_weights(shared)  # refused before mode both; now the adapters sit on it
    fresh = HFEngine(tiny_model_dir)
    fresh.load_weights(shared)
    shared_only = fresh.generate([prompt], SamplingParams(**greedy))[0]
    fresh.load_weights(alice)
    alice_on_shared = fresh.generate([prompt], SamplingParams(**greedy, adapter_id=ALICE))[0]
    for adapter, want in ((BOB, shared_only), (ALICE, alice_on_shared)):
        got = served.generate([prompt], SamplingParams(**greedy, adapter_id=adapter))[0]
        assert got.token_ids == want.token_ids and got.logprobs == pytest.approx(want.logprobs, abs=1e-5)
    assert served.version.version == 3 and served.user_adapters[ALICE].version == 1


@pytest.mark.parametrize("mode", ["per_user", "both"])
@pytest.mark.parametrize("override, field", [
    ("learner.lora.enabled=true", "learner.lora.enabled"),
    ("engine.max_lora_rank=4", "personalization.lora.r"),
])
def test_per_user_mode_refuses_what_it_cannot_run(override, field, mode):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config.load(overrides=[f"personalization.mode={mode}", "learner.batch_turns=2", "engine.kind=vllm", override])


def test_several_learner_workers_split_users_in_per_user_mode_only():
    """per_user: each worker owns the users whose adapter id hashes to it (in_shard), every user exactly one worker;
    both: one worker (the shared policy's DDP beside the shards is not built)."""
    from hsd_ray.core.weights import in_shard

    assert Config.load(overrides=["personalization.mode=per_user", "learner.num_workers=2"]).learner.num_workers == 2
    with pytest.raises(ConfigError, match=r"learner\.num_workers"):
        Config.load(overrides=["personalization.mode=both", "learner.num_workers=2"])
    adapters = [user_adapter_id(f"user{i}") for i in range(200)]
    for world in (1, 2, 3):
        owners = [[r for r in range(world) if in_shard(a, (r, world))] for a in adapters]
        assert all(len(o) == 1 for o in owners)  # exactly one owner each
        assert {o[0] for o in owners} == set(range(world))  # and every worker owns some
    assert all(in_shard(a, None) for a in adapters)


def test_mode_both_has_users_adapters_and_trains_the_shared_policy():
    both = Config.load(overrides=["personalization.mode=both"])
    assert both.personalization.per_user and both.gates_user_adapters
    assert not Config.load().personalization.per_user


def _adapter_drift(engine, tmp_path, retain_coef: float) -> float:
    """KL(shared policy ‖ an adapter) on the retain replies after 6 of its steps on a follow-up's turn."""
    from hsd_ray.core.retain import build_retain_set, retain_loss

    cfg = Config.load(overrides=["personalization.mode=per_user", "personalization.lr=3e-3", "loss.kl_coef=0",
                                 "loss.baseline=student", f"loss.retain_coef={retain_coef}"])
    torch.manual_seed(0)
    bank = _bank(engine, cfg, tmp_path / str(retain_coef))
    reference = ReferencePolicy(bank.model, "initial")  # the adapter switched off: the shared policy
    retain = build_retain_set(reference, engine.tokenizer, ["Name a fruit.", "What is 47 + 38?", "Spell cat.",
                                                            "Who wrote Hamlet?"], max_new_tokens=8)
    batch = _batch(engine, cfg, followup="Too long. One word only.")
    for step in range(6):
        m = bank.step(ALICE, batch, cfg.loss, grad_clip=10.0, reference=reference, retain=retain.draw(step, 4))
        assert ("kl_retain" in m) == (retain_coef > 0)
    bank._activate(ALICE)
    with torch.no_grad():
        return float(retain_loss(bank.model, reference, retain.draw(0, 4))[0])


def test_the_retain_anchor_holds_an_adapters_retain_replies(engine, tmp_path):
    """loss.retain_coef in per_user mode: the anchor's reference is the shared policy under the adapter."""
    free, anchored = _adapter_drift(engine, tmp_path, 0.0), _adapter_drift(engine, tmp_path, 10.0)
    assert free > 1e-4
    assert anchored < 0.5 * free, (free, anchored)
