"""``atheria --help`` and each command's ``--help`` read as plain text: no reStructuredText markup, every
option named with a metavar that says what it takes, and every option and command explained."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from atheria_kit.cli import COMMANDS, build_parser
from tests._paths import REPO_ROOT

HELP_COLUMNS = "100"


def _help(*args: str) -> str:
    env = {"COLUMNS": HELP_COLUMNS, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "atheria_kit", *args, "--help"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _entries_without_help(text: str) -> list[str]:
    """The option and command lines of an argparse help text that have no explanation after them.

    argparse writes an entry as ``  -x, --long METAVAR   help...``; when the invocation is too long the help
    starts on the next, more deeply indented line."""
    lines = text.splitlines()
    missing = []
    in_list = False
    for i, line in enumerate(lines):
        if re.match(r"^\S.*:$", line):  # "options:", "positional arguments:", a group title
            in_list = True
            continue
        if not in_list or not re.match(r"^ {2,4}\S", line):
            continue
        invocation_and_help = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if len(invocation_and_help) == 2:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        indent = len(line) - len(line.lstrip())
        if not (following.strip() and len(following) - len(following.lstrip()) > indent + 4):
            missing.append(line.strip())
    return missing


@pytest.mark.parametrize("command", [""] + [name for name, _, _ in COMMANDS])
def test_help_is_plain_text_and_explains_every_option(command: str) -> None:
    text = _help(*([command] if command else []))
    assert "``" not in text and ":func:" not in text and ":class:" not in text, text
    assert _entries_without_help(text) == [], text


def test_the_help_checker_catches_an_option_without_help() -> None:
    text = "usage: x\n\noptions:\n  -h, --help  show this help\n  --seed N\n  --very-long-option-name VALUE\n" \
           "                        explained on the next line\n"
    assert _entries_without_help(text) == ["--seed N"]


def _actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:  # argparse offers no public accessor for a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend((f"{name} {n}".strip(), a) for n, a in _actions(sub))
        else:
            found.append(("", action))
    return found


@pytest.mark.parametrize("command", [name for name, _, _ in COMMANDS])
def test_every_option_that_takes_a_value_has_a_chosen_metavar_and_help(command: str) -> None:
    parser = build_parser(only=command)
    for where, action in _actions(parser):
        if not where.startswith(command) or not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flag = f"atheria {command} {'/'.join(action.option_strings)}"
        assert action.help, f"{flag} has no help text"
        if action.nargs != 0:  # it takes a value: the metavar says what kind, not the field's name in capitals
            assert action.metavar is not None or action.choices is not None, f"{flag} has no metavar"


def test_a_status_line_is_printed_once_not_again_as_a_log_line() -> None:
    import subprocess
    import sys

    code = ("from atheria_kit.cli import configure_logging; configure_logging(); "
            "import logging; from atheria_kit.say import say; say('stopped before episode 3'); "
            "logging.getLogger('atheria_kit.session').info('a log line')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.count("stopped before episode 3") == 1
    assert "stopped before episode 3" not in done.stderr
    assert "a log line" in done.stderr  # other INFO logs still show
