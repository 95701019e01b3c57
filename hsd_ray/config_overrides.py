"""The command-line side of the config: dotted overrides (`--learner.lr 1e-5`, `learner.lr=1e-5`) parsed as YAML
values and set into the loaded mapping, and validation errors turned into one message that names the field.
Kept apart from config.py, which holds only the typed sections."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError


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
            out.append((key, yaml.safe_load(raw) if raw != "" else ""))
        except yaml.YAMLError:
            out.append((key, raw))
    return out


_KEY_EQ = re.compile(r"^[A-Za-z_][\w.-]*=")  # "section.field=value" is an override, never a flag's value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data['a']['b']['c'] = value for key 'a.b.c', creating the sections on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def describe_validation_error(e: ValidationError) -> str:
    """pydantic's errors as one line that names each field ("learner.lr: Input should be greater than 0 (got -1)")."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
        lines.append(f"{loc}: {msg}{got}")
    return "invalid config: " + "; ".join(lines)
