"""The version gate's questions with a known answer: the probe set's plain facts (capitals, no format instruction)
and checkable prompts, asked in one greedy batch, facts first, of whatever weights the gatekeeper's engine holds
(loop/gatekeeper.py), and read with the strict checker (core/version_gate.check_answer); and its balanced yes/no
questions, read for the verdict each reply gives (core/version_gate.first_verdict). The gatekeeper decides what a
lost answer or a one-way verdict means; this module only asks and reads."""

from __future__ import annotations

from hsd_ray.core.engine_api import SamplingParams
from hsd_ray.core.prompts import render_prompt
from hsd_ray.core.version_gate import answer_margin, check_answer, fact_named_eventually, first_verdict


def greedy(engine, prompts: list[list[int]], max_tokens: int, top_k: int = 0):
    """Greedy replies to `prompts` in one engine call (with their top-k log-probs per token when `top_k`)."""
    return engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0, top_logprobs=top_k))


class AnswerProbes:
    """The facts and checkable prompts of a probe set (hsd_ray/data/probes.json), rendered for `engine`."""

    def __init__(self, engine, probes: dict, check_max_tokens: int, facts_max_tokens: int):
        asked = [{**f, "kind": "named"} for f in probes.get("facts", [])] + list(probes["checkable"])
        self.engine, self.check_max_tokens, self.facts_max_tokens = engine, check_max_tokens, facts_max_tokens
        self.n_facts = len(asked) - len(probes["checkable"])
        self.prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": c["prompt"]}]) for c in asked]
        self.answers = [(c["answer"], c["kind"]) for c in asked]
        self.questions = [c["prompt"] for c in asked]
        self.yes_no = [render_prompt(engine.tokenizer, [{"role": "user", "content": q["prompt"]}])
                       for q in probes.get("yes_no", [])]

    def ask(self, top_k: int = 0) -> tuple[list[bool], list]:
        """Which facts and checkable prompts (in that order) the loaded weights answer right, and their greedy
        replies (engine results: `.text`, and `.top_logprobs` with `top_k`)."""
        replies = greedy(self.engine, self.prompts, self.check_max_tokens, top_k=top_k)
        return [check_answer(r.text, answer, kind) for r, (answer, kind) in zip(replies, self.answers)], replies

    def verdicts(self) -> list[str | None]:
        """The yes/no each greedy reply to the yes/no questions gives ("yes", "no" or None), in probe order."""
        if not self.yes_no:
            return []
        return [first_verdict(r.text) for r in greedy(self.engine, self.yes_no, self.check_max_tokens)]

    def read_late(self, right: list[bool], answered: list, counted: list[bool]) -> tuple[list[bool], int]:
        """`right` with each `counted` fact missed in `check_max_tokens` read over a whole reply
        (fact_named_eventually): its reply in `answered` if that ended on its own, else one asked for
        `facts_max_tokens`; and how many were late."""
        n = self.facts_max_tokens
        missed = [i for i in range(self.n_facts) if counted[i] and not right[i]]
        if not missed or n <= self.check_max_tokens:
            return right, 0
        cut = [i for i in missed if not answered[i].finished]  # greedy: a finished reply asked again is the same
        longer = dict(zip(cut, greedy(self.engine, [self.prompts[i] for i in cut], n))) if cut else {}
        late = {i for i in missed if fact_named_eventually(longer.get(i, answered[i]).text, self.answers[i][0])}
        return [ok or i in late for i, ok in enumerate(right)], len(late)

    def fact_margins(self, replies: list) -> list[float]:
        """`answer_margin` of each plain fact's greedy reply (`replies`, generated with the top 2 per token)."""
        tok = self.engine.tokenizer
        return [answer_margin(r.top_logprobs, [check_answer(tok.decode(r.token_ids[: i + 1], skip_special_tokens=True),
                                                             answer, kind) for i in range(len(r.token_ids))])
                for r, (answer, kind) in zip(replies, self.answers[: self.n_facts])]

    def accuracy(self, right: list[bool]) -> float:
        """The share of the checkable prompts (not the facts) answered right."""
        checkable = right[self.n_facts:]
        return sum(checkable) / max(len(checkable), 1)
