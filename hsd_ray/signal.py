"""`python -m hsd_ray.signal`: the per-token hindsight signal of one (prompt, reply, follow-up) triple.

Shows what the learner would be told about each reply token: the teacher's log-prob log π(y_i | x, o, y_<i), the
baseline's log-prob and their difference A_i (arXiv 2603.12273, §3; the per-token view of the paper's Fig. 2). With
`--baseline student` the baseline is the plain student context, A_i = log π(y_i|x,o,y_<i) − log π(y_i|x,y_<i) (the
paper); with `--baseline reference` it is the hindsight context holding a neutral reference follow-up (the contrastive
variant measured in METHOD.md, which cancels the effect of the hindsight wording itself).

Scoring goes through the production path: `Turn` → `hsd_ray.core.scoring.score_turns` → `HFEngine.score` (float32), so
what is shown is exactly what a teacher computes. A_i here is uncentred (the learner may mean-centre it per sequence,
`loss.center_advantages`). The reply is scored as finished, so an end-of-turn token is appended and shown last.

Layout: `compute_signal` (engine in, rows out), pure formatters (`format_table`, `format_json`, `format_html`) and the
CLI (`main(argv) -> int` around `run(args) -> str`; a bad argument prints one `hsd_ray.signal: error: ...` line and
returns 2, as argparse's own errors do).
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from dataclasses import asdict, dataclass

from hsd_ray.config import FeedbackConfig, HindsightConfig
from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES

PROG = "hsd_ray.signal"
BASELINES = ("student", "reference")


@dataclass
class TokenSignal:
    """One scored reply token. `token` is the text this token adds to the reply (see `token_pieces`)."""

    index: int
    token: str
    token_id: int
    teacher_logp: float
    baseline_logp: float
    advantage: float  # teacher_logp - baseline_logp, computed in float64 from the float32 scores


class SignalError(ValueError):
    """A bad argument the CLI reports as one line with exit code 2."""


# ---- computing ------------------------------------------------------------------------------------------------------
def check_inputs(prompt: str, reply: str, template: str) -> str:
    """Validate the text inputs; return the template text (a named template resolved). Raises SignalError."""
    if not prompt.strip():
        raise SignalError("--prompt is empty")
    if not reply.strip():
        raise SignalError("--reply is empty: there are no reply tokens to score")
    if template not in HINDSIGHT_TEMPLATES and "{followup}" not in template:
        names = ", ".join(sorted(HINDSIGHT_TEMPLATES))
        raise SignalError(f"--template must be one of {names} or a text containing {{followup}}, got {template!r}")
    return HINDSIGHT_TEMPLATES.get(template, template)


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence, so that ''.join(pieces) == decode(ids).

    Decoded by prefixes rather than one id at a time, so leading spaces (SentencePiece) and characters split over
    several byte-level tokens come out right: a token that ends inside a UTF-8 character (its prefix decodes to U+FFFD,
    not a prefix of the whole text) contributes '' and the token that completes the character carries all of it.
    Special tokens are shown (the appended EOS appears as e.g. <|im_end|>).
    """

    def decode(prefix: list[int]) -> str:
        return tokenizer.decode(prefix, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    full = decode(ids)
    pieces: list[str] = []
    done = ""  # decoded text of the tokens placed so far (always a prefix of `full`)
    for i in range(len(ids)):
        text = decode(ids[: i + 1])
        if full.startswith(text) and len(text) >= len(done):
            pieces.append(text[len(done) :])
            done = text
        else:  # ends inside a character (U+FFFD so far) that a later token completes
            pieces.append("")
    return pieces


def compute_signal(
    engine,
    *,
    prompt: str,
    reply: str,
    followup: str,
    template: str = "online",
    baseline: str = "student",
    reference_followup: str | None = None,
) -> list[TokenSignal]:
    """Score the turn (user `prompt`, finished `reply`, next user message `followup`) with `engine`; one row per
    scored token (the reply's tokens, then the end-of-turn token). Raises SignalError for bad inputs."""
    from hsd_ray.config import LossConfig
    from hsd_ray.core.scoring import score_turns
    from hsd_ray.core.turns import Turn

    check_inputs(prompt, reply, template)
    if baseline not in BASELINES:
        raise SignalError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    hcfg = HindsightConfig(template=template)
    if reference_followup is not None:
        hcfg.reference_followup = reference_followup
    lcfg = LossConfig(kind="sampled_token", baseline="student" if baseline == "student" else "reference_followup")
    turn = Turn(context=[{"role": "user", "content": prompt}], reply=reply, followup=followup, reply_finished=True)
    scores = score_turns(engine, [turn], hcfg, lcfg)[0].scores
    ids = [int(i) for i in scores.target_ids_T]
    pieces = token_pieces(engine.tokenizer, ids)
    return [
        TokenSignal(i, piece, tid, float(t), float(b), float(t) - float(b))
        for i, (piece, tid, t, b) in enumerate(zip(pieces, ids, scores.teacher_logp_T, scores.baseline_logp_T))
    ]


def summarize(rows: list[TokenSignal]) -> dict:
    """tokens, mean/sum of A, fraction of tokens with A > 0, mean teacher and baseline log-probs."""
    n = len(rows)
    total = sum(r.advantage for r in rows)
    return {
        "tokens": n,
        "mean_advantage": total / n if n else 0.0,
        "sum_advantage": total,
        "positive_fraction": sum(r.advantage > 0 for r in rows) / n if n else 0.0,
        "mean_teacher_logp": sum(r.teacher_logp for r in rows) / n if n else 0.0,
        "mean_baseline_logp": sum(r.baseline_logp for r in rows) / n if n else 0.0,
    }


# ---- formatting (pure) ----------------------------------------------------------------------------------------------
def baseline_formula(baseline: str) -> str:
    if baseline == "student":
        return "A_i = log π(y_i|x,o,y<i) − log π(y_i|x,y<i)  (paper: baseline = student context)"
    return "A_i = log π(y_i|x,o,y<i) − log π(y_i|x,o_ref,y<i)  (contrastive: baseline = reference follow-up)"


def format_table(rows: list[TokenSignal], summary: dict, *, baseline: str = "student") -> str:
    """A fixed-width table: index, token (repr-escaped), teacher logp, baseline logp, A; then a summary line."""
    reprs = [repr(r.token) for r in rows]
    width = max([len("token"), *map(len, reprs)])
    lines = [
        baseline_formula(baseline),
        f"{'i':>4}  {'token':<{width}}  {'teacher':>9}  {'baseline':>9}  {'A':>9}",
    ]
    for r, tok in zip(rows, reprs):
        lines.append(
            f"{r.index:>4}  {tok:<{width}}  {r.teacher_logp:>9.4f}  {r.baseline_logp:>9.4f}  {r.advantage:>+9.4f}"
        )
    lines.append(
        f"summary: tokens={summary['tokens']}  mean A={summary['mean_advantage']:+.4f}  "
        f"sum A={summary['sum_advantage']:+.4f}  A>0 on {summary['positive_fraction']:.0%} of tokens"
    )
    if "feedback" in summary:
        lines.append(feedback_line(summary["feedback"]))
    return "\n".join(lines)


def feedback_line(fb: dict) -> str:
    """What the feedback gate decided, and what the loop does with the turn."""
    if fb["trains"]:
        then = f"trained with loss weight {fb['weight']:g}"
    elif fb["is_feedback"]:
        then = f"dropped before scoring (zero_weight): kind {fb['kind']} weighs 0 in feedback.kind_weights"
    else:
        then = "dropped before scoring (not_feedback): this signal never trains"
    verdict = "feedback" if fb["is_feedback"] else "not feedback"
    return (f"feedback gate ({fb['gate']}): {verdict}, kind {fb['kind']}, score {fb['score']:.2f} "
            f"[{fb['reason']}] → {then}")


def format_json(rows: list[TokenSignal], summary: dict, meta: dict | None = None) -> str:
    """{"tokens": [{token, token_id, teacher_logp, baseline_logp, advantage}, ...], "summary": {...}, **meta}."""
    tokens = [{k: v for k, v in asdict(r).items() if k != "index"} for r in rows]
    return json.dumps({**(meta or {}), "tokens": tokens, "summary": summary}, ensure_ascii=False, indent=1)


def advantage_colour(a: float, max_abs: float) -> str:
    """CSS colour: red (A < 0) → white (0) → green (A > 0), intensity |A| / max_abs."""
    t = min(abs(a) / max_abs, 1.0) if max_abs > 0 else 0.0
    end = (214, 39, 40) if a < 0 else (44, 160, 44)
    r, g, b = (round(255 + (c - 255) * t) for c in end)
    return f"rgb({r},{g},{b})"


def format_html(
    rows: list[TokenSignal], summary: dict, *, prompt: str, followup: str, baseline: str = "student",
    title: str = "Hindsight signal",
) -> str:
    """A self-contained page in the style of the paper's Fig. 2: prompt and follow-up, then the reply's tokens as
    inline spans coloured by A_i (scaled by the largest |A|), the values in each span's hover title."""
    esc = html.escape
    max_abs = max((abs(r.advantage) for r in rows), default=0.0)
    spans = []
    for r in rows:
        hover = (f"A = {r.advantage:+.4f}\nteacher {r.teacher_logp:.4f}, baseline {r.baseline_logp:.4f}\n"
                 f"token {r.index}: {r.token!r} (id {r.token_id})")
        spans.append(
            f'<span class="tok" style="background:{advantage_colour(r.advantage, max_abs)}" '
            f'title="{esc(hover, quote=True)}">{esc(r.token)}</span>'
        )
    legend = "".join(
        f'<span class="sw" style="background:{advantage_colour(a, 1.0)}">{a:+.1f}</span>' for a in (-1, -0.5, 0, 0.5, 1)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52em; margin: 2em auto; color: #222; }}
.box {{ border: 1px solid #ccc; border-radius: 6px; padding: .6em .9em; margin: .6em 0; white-space: pre-wrap; }}
.label {{ font-size: .8em; color: #666; text-transform: uppercase; letter-spacing: .05em; }}
.reply {{ font-family: ui-monospace, monospace; line-height: 1.9; }}
.tok {{ border-radius: 2px; padding: 1px 0; }}
.sw {{ display: inline-block; width: 3.5em; text-align: center; font-size: .8em; border: 1px solid #ddd; }}
.meta {{ font-size: .85em; color: #555; }}
</style></head><body>
<h2>{esc(title)}</h2>
<div class="label">Prompt x</div><div class="box">{esc(prompt)}</div>
<div class="label">Follow-up o (seen by the teacher only)</div><div class="box">{esc(followup)}</div>
<div class="label">Reply y, coloured by A<sub>i</sub></div>
<div class="box reply">{"".join(spans)}</div>
<p class="meta">{esc(baseline_formula(baseline))}<br>
colour scale: ±{max_abs:.4f} (largest |A|) {legend}<br>
tokens {summary["tokens"]} · mean A {summary["mean_advantage"]:+.4f} · sum A {summary["sum_advantage"]:+.4f} ·
A&gt;0 on {summary["positive_fraction"]:.0%} of tokens</p>
</body></html>
"""


# ---- CLI -------------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: keep them to one line (exit 2)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Per-token hindsight signal A_i of one (prompt, reply, follow-up) triple.")
    default_ref = HindsightConfig().reference_followup
    p.add_argument("--model", required=True, help="smollm2-135m-instruct, tiny-random or a local model folder")
    p.add_argument("--prompt", required=True, help="the user message x")
    p.add_argument("--reply", required=True, help="the assistant reply y (scored as finished: EOS appended)")
    p.add_argument("--followup", required=True, help="the user's next message o (implicit feedback)")
    p.add_argument("--template", default="online", help="online | offline | a custom text containing {followup}")
    p.add_argument("--baseline", choices=BASELINES, default="student",
                   help="student = paper's A_i; reference = hindsight context with --reference-followup")
    p.add_argument("--reference-followup", default=None,
                   help=f"neutral follow-up of the reference baseline (default {default_ref!r})")
    p.add_argument("--gate", choices=("none", "rules", "learned", "ensemble"), default=FeedbackConfig().gate,
                   help="the feedback gate whose decision is shown (default: the loop's default)")
    p.add_argument("--device", default="cpu", help="torch device for the model")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--html", metavar="FILE", default=None, help="also write a coloured HTML view (paper Fig. 2 style)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 (one `hsd_ray.signal: error: ...` line on stderr) for a bad argument."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except SignalError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> str:
    """Validate, load the model, score, write --html if asked; return the table or JSON text."""
    if args.reference_followup is not None and args.baseline != "reference":
        raise SignalError("--reference-followup only applies with --baseline reference")
    check_inputs(args.prompt, args.reply, args.template)  # before the model loads: bad text fails fast
    from hsd_ray.models import ModelNotFoundError, resolve_model

    try:
        model_dir = resolve_model(args.model)
    except ModelNotFoundError as e:
        raise SignalError(str(e)) from None
    from transformers.utils import logging as hf_logging

    from hsd_ray.engines.hf import HFEngine

    hf_logging.disable_progress_bar()  # keep stderr for errors; the weights load in a second or two
    engine = HFEngine(model_dir, device=args.device)
    rows = compute_signal(engine, prompt=args.prompt, reply=args.reply, followup=args.followup,
                          template=args.template, baseline=args.baseline, reference_followup=args.reference_followup)
    summary = summarize(rows)
    from hsd_ray.data import build_gate

    decision = build_gate(FeedbackConfig(gate=args.gate)).decide(args.prompt, args.reply, args.followup)
    summary["feedback"] = {"gate": args.gate, **asdict(decision), "trains": decision.trains}
    if args.html:
        page = format_html(rows, summary, prompt=args.prompt, followup=args.followup, baseline=args.baseline,
                           title=f"Hindsight signal — {args.model}")
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as e:
            raise SignalError(f"cannot write --html {args.html}: {e.strerror or e}") from None
    if not args.json:
        return format_table(rows, summary, baseline=args.baseline)
    meta = {"model": args.model, "template": args.template, "baseline": args.baseline}
    if args.baseline == "reference":
        ref = args.reference_followup
        meta["reference_followup"] = HindsightConfig().reference_followup if ref is None else ref
    return format_json(rows, summary, meta)


if __name__ == "__main__":
    sys.exit(main())
