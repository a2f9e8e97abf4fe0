"""Notebook 01 as a user meets it: a real JupyterLab, driven by a real Chromium, "Run all" twice.

The first "Run all" has a 15-second time budget, so it stops part way and says so; "Restart Kernel and Run All"
(the next session) says that it resumed; after saving, shutting the kernel down and reloading the page (a
notebook reopened later, or shared), no widget may show "Error displaying widget". Screenshots go to runs/ui/.

Run with ``make test-ui`` (it installs Debian's chromium and playwright when missing). Outside it, the test runs
only when ATHERIA_UI_TEST=1 and skips otherwise: it takes minutes, more than ``make test`` can spend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._paths import REPO_ROOT
from tests.helpers import free_port, read_until_line, stop_process_group

# What the notebook must print (regular expressions over the text of all outputs).
FIRST_RUN_PATTERNS = [
    r"no checkpoint found in \S.*: starting a new run of \d+ episodes",
    r"stopped before episode \d+: .*press Run all in the next session to continue",
]
SECOND_RUN_PATTERNS = [
    r"resumed from ckpt-\d{10}(-r\d+)?\.pt \([^)]*\) at episode \d+/\d+, session 2 of this run",
]
NEVER_SHOWN = ["Error displaying widget", "Traceback (most recent call last)"]

#: A smoke-sized model and data with more episodes than a 15-second budget allows on any CPU, so that each
#: "Run all" trains some episodes and stops part way. (SMOKE = True itself caps the run at 16 episodes, which
#: a quiet machine finishes inside the budget.)
PARAMETERS = {"EXPERIMENT_NAME": '"ui"', "MAX_TRAINING_SECONDS": "15", "TOTAL_EPISODES": "400",
              "WINDOW": "24", "BATCH_SIZE": "64", "STEPS_PER_EPISODE": "4", "SAVE_EVERY_EPISODES": "5",
              "DRIVE_SYNC_EVERY": "0", "OUTPUT_ROOT": '"runs"', "SMOKE": "False"}
NOTEBOOK = REPO_ROOT / "notebooks" / "01_progressive_training.ipynb"
SCREENSHOTS = REPO_ROOT / "runs" / "ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
RUN_TIMEOUT_MS = 240_000
TOKEN = "atheria-ui-test"

pytestmark = [pytest.mark.ui, pytest.mark.timeout(900)]

if os.environ.get("ATHERIA_UI_TEST") != "1":
    pytest.skip("the browser test runs with `make test-ui` (ATHERIA_UI_TEST=1)", allow_module_level=True)


def _with_parameters(source: str, values: dict[str, str]) -> str:
    """The parameters cell's text with ``values`` written in place of the defaults, as a user would type them."""
    for name, value in values.items():
        source, n = re.subn(rf"^{name} = [^#\n]*?(\s*#.*)?$", rf"{name} = {value}\1", source, count=1, flags=re.M)
        assert n == 1, f"the parameters cell has no line '{name} = ...'"
    return source


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a copy of notebook 01 whose parameters cell holds the test's values."""
    work = tmp_path_factory.mktemp("ui")
    nb = json.loads(NOTEBOOK.read_text())
    [cell] = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    cell["source"] = _with_parameters("".join(cell["source"]), PARAMETERS)
    (work / NOTEBOOK.name).write_text(json.dumps(nb, indent=1))
    return work


@pytest.fixture(scope="module")
def jupyterlab(workdir, tmp_path_factory) -> Iterator[str]:
    """JupyterLab from this venv on 127.0.0.1 with a token, serving ``workdir``; yields its base URL."""
    home = tmp_path_factory.mktemp("jupyter-home")
    settings = home / "lab-settings"
    # Every cell stays in the page (no virtual scrolling), the notebook's kernel starts without asking, and no
    # news pop-up covers the notebook.
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    env.pop("ATHERIA_HEADLESS", None)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={workdir}",
         "--ServerApp.allow_root=True"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        read_until_line(server, f"http://127.0.0.1:{port}/", timeout=120)
        # Keep reading its log, or a full pipe would block the server.
        threading.Thread(target=server.stdout.read, daemon=True).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(server)


@pytest.fixture(scope="module")
def page(jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: run `make test-ui`, which installs it"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{jupyterlab}/lab/tree/{NOTEBOOK.name}?token={TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        _wait_for_kernel_idle(page)
        yield page
        browser.close()


def test_run_all_stops_with_a_message_and_the_next_session_resumes(page, jupyterlab):
    _menu(page, "Run", "Run All Cells")
    first = _wait_until_run_ends(page)
    _shot(page, "1-first-run-stopped", near=r"stopped before episode")
    _assert_printed(first, FIRST_RUN_PATTERNS, "first Run all")

    # The next session: a fresh kernel, the notebook's outputs cleared, Run all.
    _menu(page, "Edit", "Clear Outputs of All Cells")
    _menu(page, "Kernel", "Restart Kernel and Run All Cells")
    page.click(".jp-Dialog .jp-mod-accept")
    second = _wait_until_run_ends(page)
    _shot(page, "2-second-run-resumed", near=r"resumed from ckpt-")
    _assert_printed(second, SECOND_RUN_PATTERNS, "second Run all")

    # Reopened later: saved, kernel gone, page reloaded. What the outputs show must not depend on a live kernel.
    _menu(page, "File", "Save Notebook")
    page.wait_for_selector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)")
    _end_sessions(jupyterlab)
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-OutputArea-output")
    _wait_for_kernel_idle(page)
    _wait_for_widget_outputs_to_settle(page)
    _shot(page, "3-reopened", near=r"resumed from ckpt-")
    reopened = _output_text(page)
    for text in NEVER_SHOWN:
        assert text not in reopened, f"the reopened notebook shows {text!r}:\n{_around(reopened, text)}"
    _assert_printed(reopened, SECOND_RUN_PATTERNS, "the reopened notebook")


# --- helpers --------------------------------------------------------------------------------------------------


def _menu(page, menu: str, item: str) -> None:
    """Click ``menu`` in the menu bar, then the item whose label starts with ``item``."""
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-content > .lm-Menu-item:visible .lm-Menu-itemLabel",
                 has_text=re.compile(f"^{re.escape(item)}")).first.click()


def _wait_for_kernel_idle(page) -> None:
    """The status bar says "<kernel> | Idle" once the notebook's kernel is connected and not running anything."""
    page.wait_for_function("""() => [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')]
        .some(e => /^Python 3.* \\| Idle$/.test(e.textContent.trim()))""", timeout=120_000)


_RUN_ENDED = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim());
  return prompts.some(t => /^\\[\\d+\\]:$/.test(t)) && !prompts.some(t => t === '[*]:');
}"""


def _wait_until_run_ends(page) -> str:
    """Wait until some cell has run and none is running or queued; returns the text of all outputs."""
    try:
        page.wait_for_function(_RUN_ENDED, timeout=RUN_TIMEOUT_MS)
        _wait_for_kernel_idle(page)
    except Exception as exc:  # playwright's TimeoutError: show where the notebook stood
        page.screenshot(path=str(SCREENSHOTS / "run-did-not-end.png"))
        raise AssertionError(f"Run all did not end in {RUN_TIMEOUT_MS / 1000:.0f} s ({exc}); screenshot in "
                             f"{SCREENSHOTS}; outputs:\n{_output_text(page)[-3000:]}") from None
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    text = _output_text(page)
    not_run = [i for i, t in enumerate(prompts) if not re.fullmatch(r"\[\d+\]:", t.strip())]
    assert not not_run, f"Run all stopped before code cells {not_run}; outputs:\n{text[-4000:]}"
    for bad in NEVER_SHOWN:
        assert bad not in text, f"the notebook shows {bad!r}:\n{_around(text, bad)}"
    return text


def _wait_for_widget_outputs_to_settle(page) -> None:
    """A widget output shows "Loading widget..." until the widget manager has looked for its model in the kernel;
    then it shows the widget, or "Error displaying widget: model not found". Wait until none is loading."""
    try:
        page.wait_for_function("""() => ![...document.querySelectorAll('.jp-OutputArea-output')]
            .some(e => e.textContent.includes('Loading widget'))""", timeout=60_000)
    except Exception:  # playwright's TimeoutError
        page.screenshot(path=str(SCREENSHOTS / "widgets-still-loading.png"))
        raise AssertionError("the reopened notebook still shows 'Loading widget...' after 60 s") from None


def _output_text(page) -> str:
    return "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())


def _assert_printed(text: str, patterns: list[str], when: str) -> None:
    missing = [p for p in patterns if not re.search(p, text)]
    assert not missing, f"{when}: no line matches {missing}; the outputs say:\n{text[-4000:]}"


def _around(text: str, needle: str, width: int = 600) -> str:
    i = text.find(needle)
    return text[max(0, i - width):i + width]


def _shot(page, name: str, near: str) -> None:
    """A screenshot of the page with the output that matches ``near`` scrolled into view."""
    target = page.locator(".jp-OutputArea-output", has_text=re.compile(near)).first
    if target.count():
        target.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


_AUTH = {"Authorization": f"token {TOKEN}"}


def _end_sessions(base: str) -> None:
    """Close every notebook session and shut its kernel down: the notebook is closed and its kernel gone."""
    import requests

    for session in requests.get(f"{base}/api/sessions", headers=_AUTH, timeout=10).json():
        requests.delete(f"{base}/api/sessions/{session['id']}", headers=_AUTH, timeout=30).raise_for_status()


