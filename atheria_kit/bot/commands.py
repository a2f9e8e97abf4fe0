"""Command text from Telegram to a validated :class:`Command`, with replies that say what was wrong.

``/train_hist --cycle_size 200 --update_every 25`` becomes ``Command("train_hist", {"cycle_size": 200,
"update_every": 25})``. Options are written ``--name value`` or ``--name=value``; ``-`` and ``_`` in names are the
same (``--cycle-size``); a long dash (phones turn ``--`` into ``—``) counts as ``--``. Anything wrong raises
:class:`CommandError` whose text names the option, the value and what was expected, ready to send back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: Symbols as exchanges spell them: letters and digits (``BTCUSDT``, ``1000PEPEUSDT``).
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")
_DASHES = ("—", "–", "−")  # em dash, en dash, minus sign: what phones make of "--"


class CommandError(ValueError):
    """A command that cannot be carried out as written; the text is the reply."""


@dataclass(frozen=True)
class Option:
    """One ``--name value`` option: ``kind`` is ``int``, ``symbols`` or ``flag``."""

    name: str
    kind: str
    help: str
    minimum: int = 1
    maximum: int | None = None

    def expected(self) -> str:
        if self.kind == "int":
            upper = f" and <= {self.maximum}" if self.maximum is not None else ""
            return f"an integer >= {self.minimum}{upper}"
        if self.kind == "symbols":
            return "symbols separated by commas, e.g. BTCUSDT,ETHUSDT"
        return "no value"

    def convert(self, raw: str) -> Any:
        if self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                value = None
            if value is None or value < self.minimum or (self.maximum is not None and value > self.maximum):
                raise CommandError(f"--{self.name}={raw!r} is invalid; expected {self.expected()}")
            return value
        if self.kind == "symbols":
            symbols = [s.strip().upper() for s in raw.split(",") if s.strip()]
            bad = [s for s in symbols if not _SYMBOL.match(s)]
            if not symbols or bad or len(set(symbols)) != len(symbols):
                raise CommandError(f"--{self.name}={raw!r} is invalid; expected {self.expected()} (unique)")
            return tuple(symbols)
        raise AssertionError(self.kind)


@dataclass(frozen=True)
class Spec:
    """A command: its options, the positional words it accepts, and one line of help."""

    name: str
    help: str
    options: tuple[Option, ...] = ()
    words: tuple[str, ...] = ()  # allowed positional words (e.g. which run to stop)
    usage: str = ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)


_SYMBOLS = Option("symbols", "symbols", "which symbols (default: the configuration's)")
_MAX_CYCLES = Option("max_cycles", "int", "stop after this many cycles", maximum=1_000_000)

SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("train_hist", "start (or continue) the historical replay",
         (Option("cycle_size", "int", "bars per cycle (a checkpoint after each)", maximum=10_000_000),
          Option("update_every", "int", "bars between ensemble decisions (<= cycle_size)", maximum=10_000_000),
          _SYMBOLS, _MAX_CYCLES,
          Option("restart", "flag", "start over instead of continuing the last replay")),
         usage="/train_hist [--cycle_size N --update_every N --symbols A,B --max_cycles N --restart]"),
    Spec("train_live", "start live paper trading on the exchange's stream",
         (Option("cycle_minutes", "int", "minutes per cycle", maximum=7 * 24 * 60),
          Option("update_every", "int", "seconds between decisions", maximum=24 * 3600),
          _SYMBOLS, _MAX_CYCLES,
          Option("restart", "flag", "start over instead of continuing the live run in its folder")),
         usage="/train_live [--cycle_minutes N --update_every N --symbols A,B --max_cycles N --restart]"),
    Spec("training_status", "where each run stands", usage="/training_status"),
    Spec("stop_training", "stop runs cleanly (SIGTERM: they save a checkpoint and exit)",
         (Option("kill", "flag", "SIGKILL a run that did not stop in time (the last checkpoint is kept)"),),
         words=("hist", "live", "all"), usage="/stop_training [hist|live|all] [--kill]"),
    Spec("help", "this list", usage="/help"),
)}
ALIASES = {"start": "help"}  # Telegram clients send /start when a user opens the bot


@dataclass(frozen=True)
class Command:
    """A parsed command: its name, its options (by their canonical names) and its positional words."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    words: tuple[str, ...] = ()


def help_text() -> str:
    lines = ["Commands:"]
    for spec in SPECS.values():
        lines.append(f"{spec.usage}\n  {spec.help}")
        lines.extend(f"  --{o.name}: {o.help}" for o in spec.options)
    return "\n".join(lines)


def _normalize(token: str) -> str:
    for dash in _DASHES:
        if token.startswith(dash):
            return "--" + token[len(dash):].lstrip("-" + "".join(_DASHES))
    return token


def parse_command(text: str, bot_username: str | None = None) -> Command | None:
    """The command in a message's text; None when the text is no command (or one addressed to another bot)."""
    words = text.strip().split()
    if not words or not words[0].startswith("/"):
        return None
    head, _, addressee = words[0][1:].partition("@")
    if addressee and bot_username and addressee.lower() != bot_username.lower().lstrip("@"):
        return None  # "/status@other_bot" in a group: not for us
    name = ALIASES.get(head.lower(), head.lower())
    spec = SPECS.get(name)
    if spec is None:
        raise CommandError(f"unknown command /{head}; send /help for the list")
    options: dict[str, Any] = {}
    positional: list[str] = []
    tokens = [_normalize(t) for t in words[1:]]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--"):
            if token.lower() in spec.words:
                positional.append(token.lower())
                continue
            choices = f"; expected one of {', '.join(spec.words)}" if spec.words else ""
            raise CommandError(f"/{name}: unexpected {token!r}{choices}; usage: {spec.usage}")
        key, eq, raw = token[2:].partition("=")
        key = key.replace("-", "_").lower()
        option = spec.option(key)
        if option is None:
            known = ", ".join(f"--{o.name}" for o in spec.options) or "none"
            raise CommandError(f"/{name}: unknown option --{key}; expected one of: {known}")
        if key in options:
            raise CommandError(f"/{name}: --{key} is given twice")
        if option.kind == "flag":
            if eq:
                raise CommandError(f"--{key}={raw!r} is invalid; expected {option.expected()}")
            options[key] = True
            continue
        if not eq:
            if i >= len(tokens) or tokens[i].startswith("--"):
                raise CommandError(f"--{key} has no value; expected {option.expected()}")
            raw, i = tokens[i], i + 1
        options[key] = option.convert(raw)
    if len(positional) > 1:
        raise CommandError(f"/{name}: give one of {', '.join(spec.words)}, not {' and '.join(positional)}")
    return Command(name, options, tuple(positional))
