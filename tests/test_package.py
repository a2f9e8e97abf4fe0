"""The package's public API resolves, imports lazily, and the console script is wired."""

from __future__ import annotations

import subprocess
import sys

import pytest

import atheria_kit


@pytest.mark.parametrize("name", [n for n in atheria_kit.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(atheria_kit, name) is not None


def test_importing_the_package_does_not_import_torch():
    code = "import sys, atheria_kit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_lists_its_commands():
    out = subprocess.run([sys.executable, "-m", "atheria_kit", "--help"], capture_output=True, text=True).stdout
    for command in ("walkforward", "monitor", "replay"):
        assert command in out


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        atheria_kit.nope  # noqa: B018
