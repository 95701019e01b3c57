"""Config: every YAML in the repo loads; overrides parse; bad input names the field."""

from pathlib import Path

import pytest

from hsd_ray.config import Config, ConfigError, parse_overrides

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
# Kubernetes manifests (cluster/kuberay/) are not project configs: tests/unit/test_kuberay_manifests.py validates them.
YAMLS = sorted(p for p in ROOT.rglob("*.yaml") if not {".venv", "runs", "kuberay"} & set(p.parts))


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(ROOT)) for p in YAMLS])
def test_every_config_file_loads(path):
    Config.load(path)


def test_found_the_cluster_configs():
    names = {p.name for p in YAMLS}
    assert {"local.yaml", "gpu.yaml"} <= names


def test_overrides_both_syntaxes_and_types():
    cfg = Config.load(overrides=["--learner.lr", "3e-4", "loss.kind=topk", "--learner.lora.enabled", "serve.port=9001"])
    assert cfg.learner.lr == 3e-4 and cfg.loss.kind == "topk" and cfg.learner.lora.enabled and cfg.serve.port == 9001
    assert parse_overrides(["a.b=x y"]) == [("a.b", "x y")]


@pytest.mark.parametrize(
    "override, field",
    [("learner.lr=-1", "learner.lr"), ("loss.kind=magic", "loss.kind"), ("serve.nope=1", "serve.nope"),
     ("teacher.num_workers=0", "teacher.num_workers")],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Config.load(overrides=[override])


@pytest.mark.parametrize("override", ["engine.kind=hf", "engine.vllm_async=false", "job.source=turns.jsonl"])
def test_teachers_score_on_the_serving_engine_only_where_there_is_one(override):
    Config.load(overrides=["teacher.engine=serving", "engine.kind=vllm"])  # the async vLLM replicas score
    with pytest.raises(ConfigError, match="teacher.engine=serving"):
        Config.load(overrides=["teacher.engine=serving", "engine.kind=vllm", override])


def test_bad_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config.load(p)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "missing.yaml")


def test_roundtrip_yaml(tmp_path):
    cfg = Config.load(overrides=["learner.lora.r=4"])
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    assert Config.load(p) == cfg


def test_config_imports_without_heavy_deps():
    import subprocess
    import sys

    code = "import sys, hsd_ray.config; bad = {'torch', 'ray', 'vllm'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_listens_beyond_localhost_unless_configured():
    """The chat API and the embedded Ray's dashboard bind 127.0.0.1 unless a config says otherwise; the project's
    configs do not (the KubeRay manifests set serve.host=0.0.0.0 inside their pods, explicitly)."""
    for cfg in [Config(), *(Config.load(p) for p in sorted((ROOT / "cluster").glob("*.yaml")))]:
        assert cfg.serve.host == "127.0.0.1" and cfg.ray.dashboard_host == "127.0.0.1"


def test_the_engines_lora_rank_is_the_largest_rank_this_config_trains():
    """vLLM pads every adapter to engine.max_lora_rank, and its CPU LoRA kernels cost in proportion to it."""
    rank = lambda *o: Config.load(overrides=["learner.batch_turns=2", *o]).engine.max_lora_rank  # noqa: E731
    assert rank() == 8  # nothing trains LoRA: the smallest slot vLLM has beyond 1
    assert rank("learner.lora.enabled=true") == Config().learner.lora.r == 16
    assert rank("learner.lora.enabled=true", "learner.lora.r=32") == 32
    assert rank("personalization.mode=per_user") == Config().personalization.lora.r == 8
    assert rank("personalization.mode=per_user", "engine.max_lora_rank=64") == 64  # set: kept
    with pytest.raises(ConfigError, match=r"engine\.max_lora_rank \(8\) is below .* \(16"):
        Config.load(overrides=["engine.kind=vllm", "learner.lora.enabled=true", "engine.max_lora_rank=8"])
    assert "max_lora_rank: 16" in Config.load(overrides=["learner.lora.enabled=true"]).to_yaml()


def test_overriding_one_field_of_the_user_adapter_keeps_its_other_defaults():
    """personalization.lora has defaults of its own (rank 8, attention); setting one of its fields used to rebuild it
    from the shared learner's LoRA defaults (rank 16, MLP too), silently, and the engine's rank check then failed."""
    default = Config().personalization.lora
    lora = Config.load(overrides=["personalization.lora.alpha=8"]).personalization.lora
    assert (lora.alpha, lora.r, lora.target_modules) == (8, default.r, default.target_modules)
    assert Config.load(overrides=["personalization.lora.r=4"]).learner.lora == Config().learner.lora


def test_every_loss_that_scores_a_top_k_is_held_to_vllms_logprob_limit():
    """`LossConfig.scores_topk` is the one rule the teacher's scoring and the config's vLLM check both read."""
    from typing import get_args

    from hsd_ray.config import LossConfig

    kinds = get_args(LossConfig.model_fields["kind"].annotation)
    plain = ["loss.kind=sampled_token", "loss.head_tokens=0", "loss.shift_peak_ratio=0"]
    cases = [[f"loss.kind={k}"] for k in kinds] + [plain, plain[:2]]  # plain[:2]: the default peaks still shift
    scoring = [c for c in cases if Config.load(overrides=c).loss.scores_topk]
    assert sorted(map(tuple, scoring)) == [("loss.kind=sampled_token",),  # its default shifted head
                                           ("loss.kind=sampled_token", "loss.head_tokens=0"),
                                           ("loss.kind=shifted_topk",), ("loss.kind=topk",)]
    for overrides in scoring:
        with pytest.raises(ConfigError, match="vllm_max_logprobs"):
            Config.load(overrides=[*overrides, "engine.kind=vllm", "loss.top_k=50", "engine.vllm_max_logprobs=20"])
    baseline_topk = [c for c in cases if Config.load(overrides=c).loss.scores_baseline_topk]
    assert sorted(map(tuple, baseline_topk)) == [("loss.kind=sampled_token",),
                                                 ("loss.kind=sampled_token", "loss.head_tokens=0"),
                                                 ("loss.kind=shifted_topk",)]


def test_a_head_is_refused_only_where_it_was_asked_for_with_another_loss():
    """The default head belongs to the default loss: another kind leaves it unused; setting it there is an error."""
    topk = Config.load(overrides=["loss.kind=topk"]).loss
    assert topk.head_tokens == 1 and not topk.shifted_head and not topk.scores_baseline_topk
    with pytest.raises(ConfigError, match="head_tokens"):
        Config.load(overrides=["loss.kind=topk", "loss.head_tokens=1"])
    assert Config.load(overrides=["loss.kind=topk", "loss.head_tokens=0"]).loss.kind == "topk"
    with pytest.raises(ConfigError, match="shift_peak_ratio"):
        Config.load(overrides=["loss.kind=topk", "loss.head_tokens=0", "loss.shift_peak_ratio=4"])
    peaks_only = Config.load(overrides=["loss.head_tokens=0", "loss.shift_peak_ratio=4"]).loss
    assert peaks_only.shifted_head and peaks_only.scores_baseline_topk
    with pytest.raises(ConfigError, match="shift_peak_ratio > 0"):  # `end` selects among the peaks: none without them
        Config.load(overrides=["loss.shift_peak_ratio=0", "loss.shift_peaks_to=end"])
    default = Config.load().loss  # chosen on dev (bench/learning/README.md, "Ending where the follow-up asks")
    assert (default.head_tokens, default.shift_peak_ratio, default.shift_peaks_to) == (1, 4.0, "end")
    assert not Config.load(overrides=["loss.shift_peak_ratio=0"]).loss.shift_peak_ratio  # off without naming `end`
