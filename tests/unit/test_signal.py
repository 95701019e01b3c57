"""`python -m hsd_ray.signal` run in-process on the tiny model: table, JSON, HTML and one-line argument errors."""

from __future__ import annotations

import json
import re

import pytest
import torch

from hsd_ray.signal import TokenSignal, advantage_colour, format_html, main, summarize, token_pieces

pytestmark = pytest.mark.unit

PROMPT = "What is the capital of France?"
REPLY = "The capital of France is Paris, a city on the Seine."
FOLLOWUP = "Too long, one word."
BASE = ["--model", "tiny-random", "--prompt", PROMPT, "--reply", REPLY, "--followup", FOLLOWUP]
ROW = re.compile(r"^\s*(\d+)\s+(.*?)\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s+([+-]\d+\.\d{4})$")


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _reply_ids(tok) -> list[int]:
    return tok(REPLY, add_special_tokens=False)["input_ids"]


def _run(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_has_one_row_per_reply_token_plus_eos(capsys, tok):
    rc, out, err = _run(capsys, BASE)
    assert rc == 0, err
    rows = [m for m in map(ROW.match, out.splitlines()) if m]
    ids = _reply_ids(tok)
    assert [int(m.group(1)) for m in rows] == list(range(len(ids) + 1))
    assert rows[-1].group(2) == repr("<|im_end|>")
    assert "".join(eval(m.group(2)) for m in rows[:-1]) == REPLY  # tokens are repr-escaped pieces of the reply
    for m in rows:  # A = teacher - baseline up to the 4-decimal display
        t, b, a = float(m.group(3)), float(m.group(4)), float(m.group(5))
        assert a == pytest.approx(t - b, abs=1.5e-4)
    summary, gate = out.splitlines()[-2:]
    assert gate.startswith("feedback gate (ensemble): feedback") and "trained with loss weight" in gate
    assert summary.startswith("summary:") and f"tokens={len(ids) + 1}" in summary and "mean A=" in summary
    assert "sum A=" in summary


def test_json_fields_and_exact_advantage(capsys, tok):
    rc, out, err = _run(capsys, [*BASE, "--json"])
    assert rc == 0, err
    data = json.loads(out)
    tokens, summary = data["tokens"], data["summary"]
    assert [t["token_id"] for t in tokens] == _reply_ids(tok) + [tok.eos_token_id]
    for t in tokens:
        assert set(t) == {"token", "token_id", "teacher_logp", "baseline_logp", "advantage"}
        assert t["advantage"] == t["teacher_logp"] - t["baseline_logp"]  # exactly
    assert summary["tokens"] == len(tokens)
    assert summary["sum_advantage"] == pytest.approx(sum(t["advantage"] for t in tokens))
    assert summary["mean_advantage"] == pytest.approx(summary["sum_advantage"] / len(tokens))
    assert data["baseline"] == "student" and data["template"] == "online"


def test_scores_match_an_independent_forward_pass(capsys, tok, tiny_model_dir):
    """Student baseline = log π(y_i | x, y_<i) and teacher = log π(y_i | x + hindsight(o), y_<i), from a plain
    unbatched full-logits forward of the same model (not through the engine's packing)."""
    from transformers import AutoModelForCausalLM

    from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES

    rc, out, _ = _run(capsys, [*BASE, "--json"])
    tokens = json.loads(out)["tokens"]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    target = _reply_ids(tok) + [tok.eos_token_id]

    def logps(user_text: str) -> list[float]:
        prompt = tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + target])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        P = len(prompt_ids)
        return [float(logp[P - 1 + i, t]) for i, t in enumerate(target)]

    student = logps(PROMPT)
    teacher = logps(PROMPT + HINDSIGHT_TEMPLATES["online"].replace("{followup}", FOLLOWUP))
    assert [t["baseline_logp"] for t in tokens] == pytest.approx(student, abs=1e-4)
    assert [t["teacher_logp"] for t in tokens] == pytest.approx(teacher, abs=1e-4)


def test_reference_baseline_and_custom_template(capsys):
    argv = [*BASE, "--json", "--baseline", "reference", "--reference-followup", "OK.", "--template",
            "\n\nLater the user said: {followup}"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    contrastive = json.loads(out)
    rc, out, _ = _run(capsys, [*BASE, "--json"])
    paper = json.loads(out)
    assert contrastive["baseline"] == "reference" and contrastive["reference_followup"] == "OK."
    assert len(contrastive["tokens"]) == len(paper["tokens"])
    # Different baseline context → different baseline log-probs.
    assert [t["baseline_logp"] for t in contrastive["tokens"]] != [t["baseline_logp"] for t in paper["tokens"]]


def test_html_has_one_span_per_token(capsys, tmp_path):
    page = tmp_path / "signal.html"
    rc, out, err = _run(capsys, [*BASE, "--html", str(page), "--json"])
    assert rc == 0, err
    tokens = json.loads(out)["tokens"]
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text and "http" not in text  # self-contained
    assert text.count('<span class="tok"') == len(tokens)
    assert PROMPT in text and FOLLOWUP in text
    assert "&lt;|im_end|&gt;" in text  # token text is escaped
    titles = re.findall(r'<span class="tok" style="background:rgb\(\d+,\d+,\d+\)" title="A = ([+-]\d+\.\d+)', text)
    assert [float(a) for a in titles] == pytest.approx([t["advantage"] for t in tokens], abs=1e-4)


def test_colour_scale():
    assert advantage_colour(0.0, 1.0) == "rgb(255,255,255)"
    red, green = advantage_colour(-2.0, 2.0), advantage_colour(2.0, 2.0)
    assert red == "rgb(214,39,40)" and green == "rgb(44,160,44)"
    r, g, b = map(int, re.findall(r"\d+", advantage_colour(-0.5, 2.0)))
    assert 214 < r < 255 and 39 < g < r and b < r  # a lighter red for a smaller |A|
    assert advantage_colour(0.3, 0.0) == "rgb(255,255,255)"  # all-zero signal: no division by zero


def test_format_html_escapes_and_handles_empty_pieces():
    rows = [TokenSignal(0, "<b>", 5, -1.0, -2.0, 1.0), TokenSignal(1, "", 6, -1.0, -1.0, 0.0)]
    text = format_html(rows, summarize(rows), prompt="p & q", followup='say "no"')
    assert text.count('<span class="tok"') == 2 and "&lt;b&gt;" in text and "p &amp; q" in text


def test_token_pieces_rebuild_the_text(tok):
    text = "Héllo wörld 😀 <|im_end|> ok"
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [tok.eos_token_id]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text + "<|im_end|>"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--model", "no-such", "--prompt", "p", "--reply", "r", "--followup", "o"], "unknown model 'no-such'"),
        (["--prompt", "p", "--reply", "  ", "--followup", "o"], "--reply is empty"),
        (["--prompt", "", "--reply", "r", "--followup", "o"], "--prompt is empty"),
        (["--prompt", "p", "--reply", "r", "--followup", "o", "--template", "no slot"], "{followup}"),
        (["--prompt", "p", "--reply", "r"], "the following arguments are required: --followup"),
        (["--prompt", "p", "--reply", "r", "--followup", "o", "--baseline", "teacher"], "--baseline"),
        (["--prompt", "p", "--reply", "r", "--followup", "o", "--reference-followup", "x"], "--baseline reference"),
    ],
    ids=["unknown-model", "empty-reply", "empty-prompt", "bad-template", "missing-followup", "bad-baseline",
         "reference-without-baseline"],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, needle):
    if "--model" not in argv:
        argv = ["--model", "tiny-random", *argv]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsd_ray.signal: error: ") and needle in lines[0], err


def test_missing_model_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(BASE[2:])
    assert e.value.code == 2 and "required: --model" in capsys.readouterr().err


def test_unwritable_html_is_an_argument_error(capsys, tmp_path):
    rc, out, err = _run(capsys, [*BASE, "--html", str(tmp_path / "missing-dir" / "x.html")])
    assert rc == 2 and err.startswith("hsd_ray.signal: error: cannot write --html") and len(err.splitlines()) == 1


def test_gate_decision_is_shown_and_a_topic_change_never_trains(capsys):
    argv = [a if a != FOLLOWUP else "By the way, what's a good name for a goldfish?" for a in BASE]
    rc, out, err = _run(capsys, argv + ["--json"])
    assert rc == 0, err
    fb = json.loads(out)["summary"]["feedback"]
    assert fb["gate"] == "ensemble" and fb["is_feedback"] is False and fb["weight"] == 0.0
    rc, out, _ = _run(capsys, argv + ["--gate", "none"])
    assert rc == 0 and out.splitlines()[-1].startswith("feedback gate (none): feedback, kind unknown")
