"""Command-line overrides for the typed config (config.py): `section.field=value` / `--section.field value` pairs,
parsed as YAML, set into the nested dict that `Config.load` validates, and pydantic's errors as one line naming each
bad field. Imports neither torch, ray nor vllm, as config.py.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`['--a.b', '1', 'c.d=x', '--flag']` -> [('a.b', 1), ('c.d', 'x'), ('flag', True)]; values parsed as YAML."""
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if "=" in arg:
            key, raw = arg.lstrip("-").split("=", 1)
            i += 1
        elif arg.startswith("--"):
            key = arg[2:]
            if i + 1 < len(args) and not args[i + 1].startswith("--") and not _KEY_EQ.match(args[i + 1]):
                raw, i = args[i + 1], i + 2
            else:
                raw, i = "true", i + 1
        else:
            raise ConfigError(f"cannot parse override {arg!r}: use --section.field VALUE or section.field=VALUE")
        key = key.replace("-", "_")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


_KEY_EQ = re.compile(r"^[A-Za-z_][\w.-]*=")  # "section.field=value" is an override, never a flag's value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def describe_error(e) -> str:
    """A pydantic ValidationError as one line: each bad field's dotted path, what is wrong, and the value given."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
        lines.append(f"{loc}: {msg}{got}")
    return "invalid config: " + "; ".join(lines)
