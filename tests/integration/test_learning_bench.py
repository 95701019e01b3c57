"""The learning benchmark (bench/learning) end to end on the tiny model: simulated users over the real HTTP service,
capture → teacher → learner → broadcast, evaluations on the published versions, JSON result and PNG curve."""

from __future__ import annotations

import json
import math
import time

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("eval_via, loop_engine, seeds, extra", [
    ("engine", "vllm", "0,1", []), ("http", "hf", "0", []), ("engine", "vllm", "0,1", ["learner.lora.enabled=true"])],
    ids=["vllm", "http-hf", "vllm-lora"])
def test_short_benchmark_run_writes_json_and_png(ray_session, tiny_model_dir, tmp_path, capsys, eval_via,
                                                 loop_engine, seeds, extra):
    """The default (vLLM loop, evaluation on an in-process vLLM engine following the registry; two runs, so the
    shared evaluation engine must go back to the base weights in between), the all-HTTP, transformers variant, and
    a LoRA learner (the evaluation engine must be built with a LoRA slot to load its versions)."""
    from bench.learning.preferences import PREFERENCES
    from bench.learning.run import main

    t0 = time.time()
    rc = main(["--model", "tiny-random", "--preferences", "all_lowercase", "--variants", "contrastive",
               "--seeds", seeds, "--interactions", "8", "--eval-every", "4", "--heldout", "3", "--heldout-yes-no",
               "2", "--capability", "3", "--samples", "2", "--max-tokens", "12", "--out", str(tmp_path), "--name",
               "smoke", "--eval-via", eval_via, f"engine.kind={loop_engine}", "broadcast.poll_seconds=0.2",
               "teacher.idle_sleep_s=0.05", *extra])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    assert time.time() - t0 < 150 * len(seeds.split(","))

    result = json.loads((tmp_path / "learning-smoke.json").read_text())
    for key in ("config", "env", "preferences", "prompts", "runs", "summary", "errors", "command"):
        assert key in result
    assert result["errors"] == []
    assert [r["seed"] for r in result["runs"]] == [int(x) for x in seeds.split(",")]
    for run in result["runs"]:
        assert run["variant"] == "contrastive" and run["preference"] == "all_lowercase" and not run["control"]
        assert [e["interactions"] for e in run["evals"]] == [0, 4, 8]
        assert run["loop_config"]["engine"]["kind"] == loop_engine
        assert run["loop_config"]["learner"]["lora"]["enabled"] == bool(extra)
        for ev in run["evals"]:
            assert ev["via"] == eval_via and ev["split"] == "dev"
            assert ev["yes_no"]["n"] == 2 * 2 and 0.0 <= ev["yes_no"]["correct"] <= 1.0
            assert set(ev["compliance"]) == set(PREFERENCES)
            assert all(0.0 <= v <= 1.0 for v in ev["compliance"].values())
            assert ev["compliance_n"]["yes_no_only"] == 2 * 2 and ev["compliance_n"]["max_words"] == 3 * 2
            assert 0.0 <= ev["capability"]["accuracy"] <= 1.0 and ev["capability"]["n"] == 3
            assert math.isfinite(ev["perplexity"]) and ev["perplexity"] > 1.0
            assert ev["off_version_replies"] == 0  # every eval reply came from the latest published version
            assert ev["fingerprint"] == f"hsd-base-v{max(ev['published_version'], 0)}"
            assert ev["perplexity_version"] == max(ev["published_version"], 0)
        users = run["users"]
        assert users["interactions"] == 8 and users["complaints"] > 0  # tiny-random never writes all lowercase
        assert users["followups"] == (users["complaints"] + users["acknowledgements"] + users["new_questions"]
                                      + users["thanks_next"] + users["chitchat"])
        last = run["evals"][-1]
        assert last["captured"] == users["followups"]
        assert last["trained"] >= 4 and last["published_version"] >= 1  # the loop really trained and broadcast
        assert run["evals"][0]["published_version"] == -1 and run["evals"][0]["perplexity_version"] == 0
    first = [r["evals"][0] for r in result["runs"]]
    for ev in first[1:]:  # every run starts from the base model, evaluated with the same sampling seeds
        assert ev["perplexity"] == pytest.approx(first[0]["perplexity"], rel=1e-6)
        assert [r["text"] for r in ev["replies"]] == [r["text"] for r in first[0]["replies"]]
    summary = result["summary"][0]
    assert summary["trained"] == "all_lowercase" and -1.0 <= summary["on_target_delta"] <= 1.0
    assert summary["perplexity_before"] > 0 and isinstance(summary["meets_bar"], bool)
    assert "all_lowercase" in printed and "before→after" in printed and "split: dev" in printed

    png = (tmp_path / "learning-smoke.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_ceiling_runs_and_writes_json(tiny_model_dir, tmp_path, capsys):
    """`python -m bench.learning.ceiling`: compliance per preference with and without the complaint in context."""
    from bench.learning.ceiling import main
    from bench.learning.preferences import PREFERENCES

    rc = main(["--model", "tiny-random", "--engine", "hf", "--samples", "1", "--heldout", "4", "--heldout-yes-no", "2",
               "--max-tokens", "6", "--templates", "online,offline,plain", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "ceiling-tiny-random-test.json").read_text())
    assert set(result["compliance"]) == set(PREFERENCES)
    for row in result["compliance"].values():
        assert set(row) == {"baseline", "hindsight_online", "hindsight_offline", "hindsight_plain", "instruction"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert set(result["target"]) == set(PREFERENCES) and set(result["yes_no"]) == set(row)
    assert result["n_per_cell"]["yes_no_only"] == 2 and "hindsight_online" in capsys.readouterr().out

    # every open reply is kept, so quality.py reads how many compliant replies are also good ones, per condition
    from bench.learning import quality

    open_prefs = {name for name, p in PREFERENCES.items() if p.prompt_kind == "open"}
    assert set(result["replies"]) == open_prefs
    for name, by_condition in result["replies"].items():
        for cond, replies in by_condition.items():
            assert len(replies) == 4 and {r["sample"] for r in replies} == {0}
            compliant = sum(PREFERENCES[name].verify(r["text"]) for r in replies)
            assert compliant / 4 == result["compliance"][name][cond]
        assert by_condition["hindsight_plain"] == by_condition["instruction"]  # the same prompts: one batch
    assert quality.main([str(tmp_path / "ceiling-tiny-random-test.json")]) == 0
    rows = json.loads((tmp_path / "quality-ceiling-tiny-random-test.json").read_text())["runs"]
    assert {r["label"] for r in rows} == {f"{n} {c}" for n in open_prefs for c in result["compliance"][n]}
    for row in rows:
        ev = row["evals"][0]
        assert ev["n"] >= 2 and 0.0 <= ev["good_compliance"] <= ev["compliance"] <= 1.0


def test_personal_benchmark_trains_one_adapter_per_user(ray_session, tiny_model_dir, tmp_path, capsys):
    """`python -m bench.learning.personal`: two users with different preferences on one per_user loop; each user's
    adapter is published, evaluated and reported; the shared policy's replies do not change."""
    from bench.learning.personal import main
    from hsd_ray.core.weights import user_adapter_id

    rc = main(["--model", "tiny-random", "--users", "all_lowercase,use_emojis", "--interactions", "4",
               "--eval-every", "2", "--heldout", "2", "--heldout-yes-no", "2", "--capability", "3", "--samples", "2",
               "--max-tokens", "8", "--out", str(tmp_path), "--name", "smoke", "--lr", "1e-2",
               "broadcast.poll_seconds=0.2", "teacher.idle_sleep_s=0.05"])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    result = json.loads((tmp_path / "personal-smoke.json").read_text())
    (run,) = result["runs"]
    assert run["adapters"] == {p: user_adapter_id(f"pu-{p}-0-0") for p in ("all_lowercase", "use_emojis")}
    assert [e["interactions_per_user"] for e in run["evals"]] == [0, 2, 4]
    last = run["evals"][-1]["targets"]
    for user, adapter in run["adapters"].items():
        assert last[user]["fingerprint"].startswith(f"hsd-{adapter}-v")  # evaluated on the user's own adapter
        assert run["users"][user]["interactions"] == 4
    assert run["evals"][0]["targets"]["all_lowercase"]["fingerprint"] == "hsd-base-v0"  # before any training
    rows = {r["user"]: r for r in result["summary"]}
    assert set(rows) == {"all_lowercase", "use_emojis"} and all(r["shared_policy_unchanged"] for r in rows.values())
    assert "shared policy v0: own" in printed
    assert (tmp_path / "personal-smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_personal_benchmark_in_mode_both_evaluates_the_served_shared_version(ray_session, tiny_model_dir, tmp_path,
                                                                              capsys):
    """personalization.mode=both trains the shared policy too: the benchmark evaluates every adapter on the shared
    version that is served, and the shared policy itself at that version, not at the base."""
    from bench.learning.personal import main

    rc = main(["--model", "tiny-random", "--users", "all_lowercase,use_emojis", "--interactions", "4",
               "--eval-every", "4", "--heldout", "2", "--heldout-yes-no", "2", "--capability", "3", "--samples", "2",
               "--max-tokens", "8", "--out", str(tmp_path), "--name", "both", "--lr", "1e-2",
               "personalization.mode=both", "learner.lr=1e-2", "version_gate.max_loop_increase=1.0",
               "version_gate.max_user_loop_increase=1.0", "broadcast.poll_seconds=0.2", "teacher.idle_sleep_s=0.05"])
    printed = capsys.readouterr().out
    assert rc == 0, printed[-3000:]
    result = json.loads((tmp_path / "personal-both.json").read_text())
    (run,) = result["runs"]
    first, last = run["evals"][0]["targets"], run["evals"][-1]["targets"]
    assert first["base"]["fingerprint"] == "hsd-base-v0" and first["base"]["shared_version"] == 0
    served = last["base"]["shared_version"]
    assert served >= 1 and last["base"]["fingerprint"] == f"hsd-base-v{served}" and last["base"]["evaluated"]
    assert {r["shared_version_final"] for r in result["summary"]} == {served} and f"shared policy v{served}" in printed
