"""Built-in demo users for `train_job.py --job.simulate_users N`: real HTTP clients of the chat service whose
follow-ups are implicit feedback. Each prefers short answers: a reply over 25 words gets a complaint in varied
wording, a short one gets thanks; then the user starts a new conversation. (The learning benchmark in bench/ has
the full set of preferences and verifiers; this is only enough traffic to watch the loop work.)

With `auth.mode: api_keys` every demo user gets a key of its own, minted for this job: the service is handed the
keys' salted records (`key_records`) in memory, never the keys and never the key file, so demo users authenticate
like anyone else and nothing about them outlives the job. (Without keys they would be refused with 401 forever.)
"""

from __future__ import annotations

import logging
import random
import threading

from hsd_ray.core.api_keys import KeyRecord, new_key

# Varied, and disjoint from the version gate's probe set (hsd_ray/data/probes.json; tests/unit/test_demo_users.py):
# the 8 questions this list once had included two of the gate's probe prompts ("Why is the sky blue?", "How do I boil
# an egg?") and France's capital, one of its checkable prompts, so `make run` trained on what the gate measures and
# judged every version partly in-sample.
QUESTIONS = [
    "How do plants make food?", "What does a CPU do?", "Name a good book to read.", "What is 12 times 7?",
    "How do rainbows form?", "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?", "Give me an idea for a weekend trip.",
    "What is a good way to start learning to code?", "Why do cats purr?", "How long should I steep green tea?",
    "How do vaccines work?", "What makes bread rise?", "Suggest a name for a goldfish.",
    "How do I remove a coffee stain from a shirt?", "What is the speed of light?",
    "Why do leaves change colour in autumn?", "How many planets are in the solar system?", "What is a prime number?",
    "Recommend a board game for four people.", "How do airplanes stay in the air?", "What causes the tides?",
    "How can I save money on groceries?", "What is the boiling point of water?", "What is a haiku?",
    "How do I make a paper airplane?", "Why is exercise good for you?", "What do bees make?",
    "How does the internet work?", "Give me a quick breakfast idea.", "What is the largest ocean?",
    "How do I tie a tie?", "Why do we have seasons?", "What is a black hole?", "How can I be a better listener?",
    "What is 45 plus 38?", "How do magnets work?", "Suggest a song for a road trip.",
    "What is the difference between a virus and a bacterium?", "How do I keep houseplants alive?",
]
COMPLAINTS = [
    "That's way too long. Answer in one short sentence.",
    "Too wordy, please keep it brief.",
    "Shorter please, I only need the key point.",
]
THANKS = ["Thanks, that's helpful.", "Great, thank you!", "Perfect."]


class DemoUsers:
    def __init__(self, n_users: int, seed: int = 0, max_tokens: int = 64, with_keys: bool = False):
        self.names = [f"demo-{i}" for i in range(n_users)]
        minted = [new_key(name) for name in self.names] if with_keys else []
        self._keys = [key for key, _ in minted] or ["demo"] * n_users  # "demo": open mode reads the `user` field
        self.key_records: tuple[KeyRecord, ...] = tuple(record for _, record in minted)
        self.seed, self.max_tokens = seed, max_tokens
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors = 0

    def start(self, base_url: str) -> "DemoUsers":
        from openai import OpenAI

        for name in ("httpx", "httpx2"):  # the openai client's HTTP library (httpx2 in this openai) logs every request
            logging.getLogger(name).setLevel(logging.WARNING)  # at INFO: a line per demo chat in the job's output

        for i, key in enumerate(self._keys):
            client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
            t = threading.Thread(target=self._run, args=(i, client), name=f"demo-user-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)

    def _run(self, i: int, client) -> None:
        rng = random.Random(self.seed * 1000 + i)
        while not self._stop.is_set():
            messages = [{"role": "user", "content": rng.choice(QUESTIONS)}]
            try:
                reply = self._chat(client, messages, self.names[i])
                followup = rng.choice(COMPLAINTS if len(reply.split()) > 25 else THANKS)
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": followup}]
                self._chat(client, messages, self.names[i])  # the follow-up is what gets captured
            except Exception:  # noqa: BLE001 - a demo user retries after a pause
                self.errors += 1
                self._stop.wait(2.0)

    def _chat(self, client, messages: list[dict], user: str) -> str:
        r = client.chat.completions.create(
            model="hsd-policy", messages=messages, user=user, max_tokens=self.max_tokens, temperature=0.7
        )
        return r.choices[0].message.content or ""
