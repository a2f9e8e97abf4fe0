"""A missing framework is named with the command that installs it; importing the kit never imports one."""

import subprocess
import sys

import pytest

from atheria_kit.integrations import MissingIntegrationError, require


def test_a_missing_framework_is_named_with_its_install_command():
    with pytest.raises(MissingIntegrationError) as e:
        require("surely_not_installed_framework_xyz", integration="huggingface")
    msg = str(e.value)
    assert "atheria_kit.integrations.huggingface needs the 'surely_not_installed_framework_xyz' package" in msg
    assert "pip install surely_not_installed_framework_xyz" in msg
    assert isinstance(e.value, ImportError)  # code that catches ImportError keeps working


def test_an_installed_framework_is_returned():
    assert require("json", integration="huggingface").dumps([1]) == "[1]"


def test_importing_the_kit_loads_no_training_framework():
    code = ("import sys, atheria_kit, atheria_kit.integrations; "
            "print(sorted(m for m in ('transformers', 'lightning', 'peft', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
