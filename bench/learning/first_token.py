"""How decided is the base model's first reply token on a capital question? (`python -m bench.learning.first_token`)

The version gate's first lost facts were answers that changed language at the first token ("El Uruguay, está el
capital de Uruguay, …" where the base says "The capital of Uruguay is Montevideo."). For every capital of
`facts.CAPITALS` asked plainly ("What is the capital of X?") this prints which the base answers greedily (the
benchmark's own capital checker, `facts.check_capital`), and for those the first token's top-1 probability and its
margin over the second: a small margin is an answer any small weight change can flip; then the smallest such margin
at any reply token up to the one that names the capital ("The capital of Zimbabwe is Har" → "e", 0.08 over " K"),
with the version gate's probe facts marked. It also prints, for the first
24 train-split open prompts, the default loss's advantage at the greedy reply's first token (log p after the user's
complaint − log p after "Thanks, that's helpful.", the contrastive baseline): whether the loss pushes that token
down. Transformers, greedy, 2 CPU cores: a minute or two. Not a benchmark of the loop: a reading of the base model, no
training.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict

COMPLAINT = "That's way too long. Please keep answers under 20 words."  # one of the "≤ 20 words" user's complaints
THANKS = "Thanks, that's helpful."  # hindsight.reference_followup's default


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.learning.facts import CAPITALS, check_capital
    from bench.learning.prompts import build_prompt_sets
    from hsd_ray.core.prompts import HINDSIGHT_TEMPLATES, hindsight_messages, render_prompt
    from hsd_ray.core.version_gate import answer_margin
    from hsd_ray.data import load_probes
    from hsd_ray.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m bench.learning.first_token", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--margin", type=float, default=0.2, help="a known answer below this first-token margin is fragile")
    args = p.parse_args(argv)
    path = resolve_model(args.model)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()

    def first_logp(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)

    probed = {f["prompt"].removeprefix("What is the capital of ").rstrip("?") for f in load_probes()["facts"]}
    known, weakest = [], []
    for country, _, _ in CAPITALS:
        ids = render_prompt(tok, [{"role": "user", "content": f"What is the capital of {country}?"}])
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        new_ids = out.sequences[0, len(ids):]
        reply = tok.decode(new_ids, skip_special_tokens=True)
        if not check_capital(reply, country):
            continue
        tops = [torch.topk(torch.softmax(scores[0].float(), -1), 2) for scores in out.scores]
        margins = [float(t.values[0] - t.values[1]) for t in tops]
        # every greedy choice up to the token that first names the capital decides the answer; the margin is the
        # version gate's own (`answer_margin`), the step is only for printing
        right_at = [check_capital(tok.decode(new_ids[: i + 1]), country) for i in range(len(new_ids))]
        top2 = [[(int(i), math.log(float(v))) for i, v in zip(t.indices, t.values)] for t in tops]
        step = min(range(right_at.index(True) + 1), key=margins.__getitem__)
        mark = "*" if country in probed else " "
        known.append((margins[0], float(tops[0].values[0]), f"{mark}{country}", tok.decode([int(tops[0].indices[0])]),
                      tok.decode([int(tops[0].indices[1])])))
        weakest.append((answer_margin(top2, right_at), step, f"{mark}{country}", tok.decode(new_ids[: step + 1]),
                        tok.decode([int(tops[step].indices[1])])))
    known.sort()
    fragile = [k for k in known if k[0] < args.margin]
    median = statistics.median(k[1] for k in known)
    print(f"capitals the base answers: {len(known)} of {len(CAPITALS)} (* = a version-gate probe fact); first-token "
          f"margin < {args.margin}: {len(fragile)}; median top-1 probability {median:.2f}")
    for margin, top1, country, a, b in fragile:
        print(f"  {country:<22} margin {margin:.3f}  top-1 {a!r} {top1:.2f}, then {b!r}")
    weak = sorted(w for w in weakest if w[0] < args.margin)
    print(f"smallest margin at any token up to the one that names the capital < {args.margin}: {len(weak)}")
    for margin, step, country, prefix, b in weak:
        print(f"  {country:<22} margin {margin:.3f}  at token {step} of {prefix!r}, then {b!r}")

    advantage: dict[str, list[float]] = defaultdict(list)
    template = HINDSIGHT_TEMPLATES["online"]
    for prompt in build_prompt_sets(0).train_open[:24]:
        context = [{"role": "user", "content": prompt}]
        first = int(first_logp(render_prompt(tok, context)).argmax())
        teacher = first_logp(render_prompt(tok, hindsight_messages(context, COMPLAINT, template)))
        baseline = first_logp(render_prompt(tok, hindsight_messages(context, THANKS, template)))
        advantage[tok.decode([first])].append(float(teacher[first] - baseline[first]))
    print("advantage at the greedy reply's first token (complaint - thanks), 24 train open prompts:")
    for token, values in sorted(advantage.items(), key=lambda kv: -len(kv[1])):
        print(f"  {token!r:<12} {len(values):>2} replies, mean {statistics.fmean(values):+.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
