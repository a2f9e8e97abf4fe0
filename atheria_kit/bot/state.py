"""What the bot keeps across its own restarts: the ``getUpdates`` offset and the runs it started.

Written atomically after every update is taken (before the command is carried out), so a restarted bot asks
Telegram for the updates after the last one it took and never runs an old command twice. It holds no secret:
the token is never part of it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from atheria_kit._io import atomic_write_json

logger = logging.getLogger(__name__)

VERSION = 1


class BotState:
    """The offset (the next ``update_id`` to ask for; None before the first update) and the runs' state."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset: int | None = None
        self.runs: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "offset": self.offset, "runs": self.runs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        offset = state.get("offset")
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool)):
            raise ValueError(f"offset={offset!r} in {self.path} is invalid; expected an integer or null")
        runs = state.get("runs") or {}
        if not isinstance(runs, dict):
            raise ValueError(f"runs={runs!r} in {self.path} is invalid; expected a mapping")
        self.offset, self.runs = offset, runs

    def load(self) -> bool:
        """Read the file if it exists; returns whether it did. A damaged file raises ``ValueError`` naming it."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise ValueError(f"bot state {self.path} is unreadable ({exc}); remove it to start afresh (old "
                             "commands still waiting at Telegram would then be run again)") from None
        if not isinstance(raw, dict):
            raise ValueError(f"bot state {self.path} is invalid; expected a JSON object")
        self.load_state_dict(raw)
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.state_dict())
