"""`python -m hsd_ray.keys add --file KEYS --user NAME` — make a per-user API key for `auth.mode: api_keys`.

Prints the key once; the key file keeps only its salted hash (core/api_keys.py). `list` shows key ids and users.
"""

from __future__ import annotations

import argparse
import sys

from hsd_ray.core.api_keys import KeyRing, append_record, new_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsd_ray.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a key for a user and print it (once)")
    add.add_argument("--file", required=True, help="the key file (auth.keys_file); created if missing")
    add.add_argument("--user", required=True, help="the user the key speaks for")
    show = sub.add_parser("list", help="key ids and their users")
    show.add_argument("--file", required=True)
    args = parser.parse_args(argv)
    if args.command == "add":
        try:
            key, record = new_key(args.user)
        except ValueError as e:
            parser.error(f"--user: {e}")
        append_record(args.file, record)
        print(key)
        print(f"(key {record.key_id} for {record.user!r} added to {args.file}; it is not stored: keep it now)",
              file=sys.stderr)
        return 0
    for record in KeyRing.load(args.file).records.values():
        print(f"{record.key_id}  {record.user}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
