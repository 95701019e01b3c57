"""Model registry: the tiny-random build, the atomic/locked cache, and name/path resolution."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from hsd_ray import models
from hsd_ray.models import KNOWN_MODELS, ModelNotFoundError, cache_dir, resolve_model

pytestmark = pytest.mark.unit

CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny-random build (in its own cache dir) shared by the read-only tests of this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSD_RAY_MODEL_CACHE", str(tmp_path_factory.mktemp("cache")))
        return resolve_model("tiny-random")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("HSD_RAY_MODEL_CACHE", str(root))
    return root


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HSD_RAY_MODEL_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("HSD_RAY_MODEL_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "hsd_ray" / "models"


def test_known_models_listed() -> None:
    assert {"smollm2-135m-instruct", "tiny-random"} <= set(KNOWN_MODELS)
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert all(isinstance(v, str) and v for v in KNOWN_MODELS.values())


def test_tiny_random_loads_in_transformers(tiny: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert tiny.name == "tiny-random" and (tiny / ".hsd_ray_complete").is_file()
    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.head_dim == 32  # vLLM's CPU attention has no head size 16
    assert cfg.vocab_size == len(tok) and 256 < len(tok) <= 1024
    ids = tok("Hello, what is 12 plus 30?", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_tiny_random_special_tokens_and_chat_template(tiny: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None
    # Same ids as SmolLM2, so code written against one runs against the other.
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert GenerationConfig.from_pretrained(tiny).eos_token_id == tok.eos_token_id == 2

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == CHATML
    rendered = tok.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Paris."}], tokenize=False, add_generation_prompt=False
    )
    assert rendered == CHATML + "Paris.<|im_end|>\n"
    # Special tokens are single ids and the text round-trips.
    ids = tok(CHATML, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 1
    assert tok.decode(ids) == CHATML


def test_tiny_random_is_deterministic(tiny: Path, cache: Path) -> None:
    import torch
    from safetensors.torch import load_file

    other = resolve_model("tiny-random")
    assert other != tiny and other.parent == cache
    a, b = load_file(tiny / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (tiny / name).read_bytes() == (other / name).read_bytes(), name


def test_build_does_not_touch_global_rng(cache: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    resolve_model("tiny-random")
    assert torch.equal(torch.rand(3), expected)


def test_second_resolve_reuses_the_folder(cache: Path) -> None:
    first = resolve_model("tiny-random")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert resolve_model("tiny-random") == first
    assert time.perf_counter() - start < 0.5
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_half_written_folder_is_rebuilt_not_loaded(cache: Path) -> None:
    # What a conversion killed half-way (without our temp-folder scheme) would leave: files, but no marker.
    half = cache / "tiny-random"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{not json")
    (half / "junk.bin").write_bytes(b"\0" * 10)
    # And a temp folder from a killed build.
    stale = cache / ".tiny-random.tmp-dead"
    stale.mkdir()

    path = resolve_model("tiny-random")
    assert path == half
    assert not (path / "junk.bin").exists()
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    assert json.loads((path / ".hsd_ray_complete").read_text())["name"] == "tiny-random"
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".tiny-random.tmp")]
    assert leftovers == []


def test_outdated_marker_is_rebuilt(cache: Path) -> None:
    path = resolve_model("tiny-random")
    (path / ".hsd_ray_complete").write_text(json.dumps({"name": "tiny-random", "version": -1}))
    (path / "junk.bin").write_bytes(b"x")
    assert resolve_model("tiny-random") == path
    assert not (path / "junk.bin").exists()


def test_failed_build_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(models._BUILDERS, "tiny-random", broken)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        resolve_model("tiny-random")
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_concurrent_resolves_build_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # flock excludes separate open file descriptions even within one process, so threads stand in for Ray workers.
    calls: list[int] = []

    def slow_build(out: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            (out / name).write_text("{}")

    monkeypatch.setitem(models._BUILDERS, "tiny-random", slow_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("tiny-random"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1
    assert results == [cache / "tiny-random"] * 4


def test_unknown_name_raises(cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="tiny-random") as info:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert isinstance(info.value, ValueError)
    assert "smollm2-135m-instruct" in str(info.value)


def test_folder_that_is_not_a_model_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        resolve_model(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="weights"):
        resolve_model(str(tmp_path))


def test_model_folder_path_is_returned(tiny: Path) -> None:
    assert resolve_model(str(tiny)) == tiny.resolve()
