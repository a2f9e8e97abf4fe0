"""The one path for lines a user must see: printed to stdout (a notebook's output, the CLI), and logged.

Why: in a notebook, INFO log records are invisible and stderr is pink. Where a run starts, resumes, stops, or
fails, and what to do next, must be plain lines in the cell output. A planned stop is not an error and is not
printed as one. :class:`UserError` is an error whose message already says what happened and what to do; IPython
shows it as that one line instead of a traceback through the kit's internals.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

__all__ = ["Say", "UserError", "say"]

logger = logging.getLogger(__name__)

_MARKS = {"info": "", "warning": "⚠ ", "error": "✗ "}


class UserError(RuntimeError):
    """A failure whose message names what failed and what to do; shown without the kit's traceback in IPython."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook: these lines replace the traceback
        return [f"\x1b[31m{type(self).__name__}: {self}\x1b[0m"]


class Say:
    """Prints status lines (``prefix`` + mark + text) to ``stream`` (default: the current ``sys.stdout``).

    ``once(key, ...)`` prints a message only the first time its key is seen (alerts that must not repeat).
    Every line is also logged at INFO under ``atheria_kit.say`` (not WARNING: with no logging configured, Python
    would print a warning record to stderr a second time, in pink).
    """

    def __init__(self, stream: TextIO | None = None, *, prefix: str = "") -> None:
        self._stream = stream
        self.prefix = prefix
        self.lines: list[str] = []  # what was said, for reports and tests
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, text: str, kind: str = "info") -> str:
        if kind not in _MARKS:
            raise ValueError(f"kind={kind!r} is invalid; expected one of {sorted(_MARKS)}")
        line = f"{self.prefix}{_MARKS[kind]}{text}"
        with self._lock:
            self.lines.append(line)
            stream = self._stream if self._stream is not None else sys.stdout
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):  # a closed stream must not turn a status line into a crash
                pass
        logger.info("%s", line)
        return line

    def warning(self, text: str) -> str:
        return self(text, "warning")

    def error(self, text: str) -> str:
        return self(text, "error")

    def once(self, key: str, text: str, kind: str = "info") -> str | None:
        """Say ``text`` unless something was already said under ``key``."""
        with self._lock:
            if key in self._seen:
                return None
            self._seen.add(key)
        return self(text, kind)


#: The default instance, for code that has no session of its own (CLI commands, config loading).
say = Say()
