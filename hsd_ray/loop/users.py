"""Built-in demo users for `train_job.py --job.simulate_users N`: real HTTP clients of the chat service whose
follow-ups are implicit feedback. Each prefers short answers: a reply over 25 words gets a complaint in varied
wording, a short one gets thanks; then the user starts a new conversation. (The learning benchmark in bench/ has
the full set of preferences and verifiers; this is only enough traffic to watch the loop work.)
"""

from __future__ import annotations

import random
import threading

QUESTIONS = [
    "What is the capital of France?",
    "How do plants make food?",
    "Give me a tip for sleeping better.",
    "What is 12 times 7?",
    "Why is the sky blue?",
    "Name a good book to read.",
    "How do I boil an egg?",
    "What does a CPU do?",
]
COMPLAINTS = [
    "That's way too long. Answer in one short sentence.",
    "Too wordy, please keep it brief.",
    "Shorter please, I only need the key point.",
]
THANKS = ["Thanks, that's helpful.", "Great, thank you!", "Perfect."]


class DemoUsers:
    def __init__(self, base_url: str, n_users: int, seed: int = 0, max_tokens: int = 64):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=120)
        self.n_users, self.seed, self.max_tokens = n_users, seed, max_tokens
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors = 0

    def start(self) -> "DemoUsers":
        for i in range(self.n_users):
            t = threading.Thread(target=self._run, args=(i,), name=f"demo-user-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        while not self._stop.is_set():
            messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
            try:
                reply = self._chat(messages, f"demo-{i}")
                followup = rng.choice(COMPLAINTS if len(reply.split()) > 25 else THANKS)
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": followup}]
                self._chat(messages, f"demo-{i}")  # the follow-up is what gets captured
            except Exception:  # noqa: BLE001 - a demo user retries after a pause
                self.errors += 1
                self._stop.wait(2.0)

    def _chat(self, messages: list[dict], user: str) -> str:
        r = self.client.chat.completions.create(
            model="hsd-policy", messages=messages, user=user, max_tokens=self.max_tokens, temperature=0.7
        )
        return r.choices[0].message.content or ""
