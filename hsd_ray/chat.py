"""`python -m hsd_ray.chat [--url http://127.0.0.1:8000/v1] [--user NAME]` — a terminal chat with the live service.

Keeps the conversation (so your next message is a follow-up that the service captures as feedback) and shows which
policy version produced each reply, so you can watch the model change while you talk. Commands: /new starts a new
conversation, /quit leaves.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hsd_ray.chat", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="base URL of the chat service")
    parser.add_argument("--user", default=None, help="your user id (the OpenAI `user` field; default 'terminal', "
                        "or the key's user with --api-key)")
    parser.add_argument("--api-key", default=os.environ.get("HSD_RAY_API_KEY", "terminal"),
                        help="your key when the service runs auth.mode=api_keys (default: env HSD_RAY_API_KEY)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--system", default=None, help="optional system message")
    args = parser.parse_args(argv)

    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=args.url, api_key=args.api_key, max_retries=1, timeout=300)
    if args.user is None and args.api_key == "terminal":
        args.user = "terminal"
    messages = _fresh(args.system)
    who = repr(args.user) if args.user else "your API key's user"
    print(f"connected to {args.url} as {who}; /new = new conversation, /quit = leave")
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return 0
        if text == "/new":
            messages = _fresh(args.system)
            print("(new conversation)")
            continue
        messages.append({"role": "user", "content": text})
        try:
            r = client.chat.completions.create(
                model="hsd-policy",
                messages=messages,
                user=args.user,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
            )
        except OpenAIError as e:
            messages.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        reply = r.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": reply})
        cut = " [cut at max_tokens]" if r.choices[0].finish_reason == "length" else ""
        print(f"bot [{r.system_fingerprint}]{cut}> {reply}")


def _fresh(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


if __name__ == "__main__":
    sys.exit(main())
