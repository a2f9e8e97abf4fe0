"""How a user installs the kit: the notebooks' install cell, the wheel in a fresh venv, the README's commands.

The install cell runs before the kit can be imported, so its logic lives in the cell's own text; these tests
load that text from the committed notebook 01 and call its functions on fake Drive and Kaggle folders (plain
folders: the cell only lists files there). The tests marked ``install`` build the wheel and the sdist as
``make dist`` does and install them into fresh virtual environments that cannot see the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests._paths import REPO_ROOT
from tests.helpers import free_port, read_until_line, stop_process_group

NOTEBOOK_01 = REPO_ROOT / "notebooks" / "01_progressive_training.ipynb"
WHEEL = "atheria_kit-{}-py3-none-any.whl"


def _install_cell_source(notebook: Path = NOTEBOOK_01) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    found = [c for c in cells if c["cell_type"] == "code" and "def find_kit_source" in "".join(c["source"])]
    assert len(found) == 1, f"{notebook.name}: expected one install cell, found {len(found)}"
    return "".join(found[0]["source"])


@pytest.fixture
def cell() -> dict:
    """The install cell's functions and constants (its last line, the install itself, does not run here)."""
    ns: dict = {"__name__": "install_cell"}
    exec(compile(_install_cell_source(), "install-cell", "exec"), ns)
    return ns


def _wheel(folder: Path, version: str = "0.1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WHEEL.format(version)
    path.write_bytes(b"")  # the cell decides from names only; pip never sees these files
    return path


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Empty stand-ins for MyDrive/atheria, /kaggle/input and the working folder."""
    p = {"drive_dir": tmp_path / "drive" / "MyDrive" / "atheria",
         "kaggle_input": tmp_path / "kaggle" / "input", "cwd": tmp_path / "work"}
    for folder in p.values():
        folder.mkdir(parents=True)
    return p


# --- the install cell's decision --------------------------------------------------------------------------


def test_does_nothing_when_the_kit_is_importable(cell, places):
    _wheel(places["drive_dir"])
    action, source, _ = cell["find_kit_source"](None, installed=True, **places)
    assert (action, source) == ("skip", None)
    action, source, _ = cell["find_kit_source"]("atheria_kit==9.9", installed=True, **places)
    assert (action, source) == ("skip", None)


def test_installs_the_wheel_a_user_put_in_drive(cell, places):
    wheel = _wheel(places["drive_dir"])
    action, source, message = cell["find_kit_source"](None, **places)
    assert (action, source) == ("install", str(wheel))
    assert str(wheel) in message


@pytest.mark.parametrize("subpath", ["my-kit-wheel", "my-kit-wheel/1", "datasets/me/my-kit-wheel"],
                         ids=["dataset", "dataset-subfolder", "owner-folder"])
def test_installs_the_wheel_of_an_attached_kaggle_dataset(cell, places, subpath):
    wheel = _wheel(places["kaggle_input"] / subpath)
    _wheel(places["kaggle_input"] / "a" / "b" / "c" / "d", "9.0.0")  # deeper folders are not searched
    assert cell["find_kit_source"](None, **places)[:2] == ("install", str(wheel))


def test_installs_a_wheel_from_the_working_folder(cell, places):
    wheel = _wheel(places["cwd"])
    assert cell["find_kit_source"](None, **places)[:2] == ("install", str(wheel))


def test_the_newest_version_wins_across_places(cell, places):
    _wheel(places["drive_dir"], "0.2.0")
    newest = _wheel(places["kaggle_input"] / "kit", "0.10.0")  # 10 > 2 > 1 numerically, not as text
    _wheel(places["cwd"], "0.1.0")
    action, source, message = cell["find_kit_source"](None, **places)
    assert (action, source) == ("install", str(newest))
    assert "newest of 3 wheels" in message


def test_nothing_found_says_where_it_looked_and_what_to_do(cell, places):
    action, source, message = cell["find_kit_source"](None, **places)
    assert (action, source) == ("missing", None)
    for folder in places.values():
        assert str(folder) in message
    for step in ("make dist", "MyDrive/atheria/", "Add Input", "Internet off", "KIT_SOURCE", "Run all again"):
        assert step in message, step


@pytest.mark.parametrize("requirement", ["atheria_kit==0.1.0", "git+https://example.org/me/kit@v0.1.0"])
def test_kit_source_requirements_and_urls_go_to_pip_as_written(cell, places, requirement):
    _wheel(places["cwd"])  # an explicit source wins over anything found
    assert cell["find_kit_source"](requirement, **places)[:2] == ("install", requirement)


def test_kit_source_may_be_a_wheel_a_source_folder_or_a_folder_of_wheels(cell, places, tmp_path):
    wheel = _wheel(tmp_path / "somewhere")
    assert cell["find_kit_source"](str(wheel), **places)[:2] == ("install", str(wheel))
    source = tmp_path / "checkout"
    source.mkdir()
    (source / "pyproject.toml").write_text("[project]\nname = 'atheria_kit'\n")
    assert cell["find_kit_source"](str(source), **places)[:2] == ("install", str(source))
    _wheel(tmp_path / "wheels", "0.1.0")
    newest = _wheel(tmp_path / "wheels", "0.3.1")
    assert cell["find_kit_source"](str(tmp_path / "wheels"), **places)[:2] == ("install", str(newest))


def test_an_empty_kit_source_means_look_for_a_wheel(cell, places):
    wheel = _wheel(places["cwd"])
    assert cell["find_kit_source"]("  ", **places)[:2] == ("install", str(wheel))


@pytest.mark.parametrize("bad", ["/no/such/atheria_kit-0.1.0-py3-none-any.whl", "./missing-folder", "EMPTY"])
def test_a_kit_source_that_cannot_be_installed_is_named_in_the_error(cell, places, tmp_path, bad):
    if bad == "EMPTY":
        bad = str(tmp_path / "empty")
        Path(bad).mkdir()
    action, source, message = cell["find_kit_source"](bad, **places)
    assert (action, source) == ("bad", None)
    assert f"KIT_SOURCE={bad!r}" in message and "expected a wheel" in message


def test_offline_pip_uses_only_the_wheels_next_to_the_kit(cell, places):
    wheel = _wheel(places["kaggle_input"] / "kit")
    offline = cell["pip_command"](str(wheel), online=False)
    assert offline[:3] == [sys.executable, "-m", "pip"]
    assert offline[offline.index("--find-links") + 1] == str(wheel.parent)
    assert "--no-index" in offline and offline[-1] == str(wheel)
    assert "--no-index" not in cell["pip_command"](str(wheel), online=True)
    assert "--no-index" not in cell["pip_command"]("atheria_kit==0.1.0", online=False)


def test_on_colab_drive_is_mounted_before_looking(cell, places, fake_colab, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    cell["DRIVE_WHEEL_DIR"] = str(tmp_path / "content" / "drive" / "MyDrive" / "atheria")
    wheel = _wheel(fake_colab.backing_dir / "atheria")  # the file is in Drive; nothing is mounted yet
    cell["_mount_drive_if_on_colab"]()
    assert fake_colab.mounts == [str(tmp_path / "content" / "drive")]
    found = cell["find_kit_source"](None, kaggle_input=places["kaggle_input"], cwd=places["cwd"])
    assert found[:2] == ("install", cell["DRIVE_WHEEL_DIR"] + "/" + wheel.name)
    cell["_mount_drive_if_on_colab"]()  # mounted already: not again
    assert len(fake_colab.mounts) == 1


def test_on_kaggle_drive_is_not_mounted(cell, fake_colab, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # Kaggle's image also carries google.colab
    cell["DRIVE_WHEEL_DIR"] = str(tmp_path / "content" / "drive" / "MyDrive" / "atheria")
    cell["_mount_drive_if_on_colab"]()
    assert fake_colab.mounts == []


def test_the_not_installed_error_shows_as_its_message_alone_in_ipython(cell):
    error = cell["KitNotInstalled"]("no wheel found; do this")
    assert error._render_traceback_() == ["KitNotInstalled: no wheel found; do this"]


# --- every notebook, every document ----------------------------------------------------------------------

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _shared_install_source() -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_notebook", REPO_ROOT / "notebooks" / "build" / "_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INSTALL_SOURCE


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_installs_the_kit_with_the_shared_cell_after_its_parameters(path):
    code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    [params] = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    # After the parameters cell, so that KIT_SOURCE can be set there (and by papermill).
    assert params + 1 < len(code) and "".join(code[params + 1]["source"]) == _shared_install_source(), (
        f"{path.name}: the code cell after the parameters cell is not the shared install cell "
        f"(notebooks/build/_notebook.py: install_cell())")
    assert re.search(r"^KIT_SOURCE = None\b", "".join(code[params]["source"]), re.M), (
        f"{path.name}: the parameters cell does not offer KIT_SOURCE = None")


def test_nothing_points_at_a_repository_that_does_not_exist():
    # The kit has no public repository or index entry: no document, notebook or module may send a user to one.
    fictional = "github.com/" + "atheria/"
    files = [REPO_ROOT / "README.md", REPO_ROOT / "pyproject.toml", *REPO_ROOT.glob("docs/*.md"),
             *REPO_ROOT.glob("notebooks/**/*.py"), *NOTEBOOKS, *REPO_ROOT.glob("atheria_kit/**/*.py")]
    hits = [f"{f.relative_to(REPO_ROOT)}:{n}" for f in files
            for n, line in enumerate(f.read_text().splitlines(), 1) if fictional in line]
    assert not hits, f"{fictional} does not exist, but these lines point at it: {hits}"
    assert "urls" not in _pyproject()["project"], "[project.urls] must name only addresses that exist"


# --- declared dependencies ------------------------------------------------------------------------------


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _by_name(lines) -> dict[str, str]:
    reqs = [Requirement(line) for line in lines]
    names = [r.name.lower().replace("_", "-") for r in reqs]
    assert len(set(names)) == len(names), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    return {name: str(r.specifier) for name, r in zip(names, reqs, strict=True)}


def test_requirements_txt_lists_exactly_the_package_dependencies():
    lines = [ln.split("#")[0].strip() for ln in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert _by_name(ln for ln in lines if ln) == _by_name(_pyproject()["project"]["dependencies"])


def test_environment_yml_installs_the_dependencies_and_the_notebook_extra():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[notebook]" in pip, "environment.yml must install the package with its notebook extra"
    listed = _by_name([d for d in conda if d != "pip" and not d.startswith("python=")]
                      + [d for d in pip if not d.startswith("-e")])
    project = _pyproject()["project"]
    core, extra = _by_name(project["dependencies"]), _by_name(project["optional-dependencies"]["notebook"])
    assert all(core[n] == extra[n] for n in core.keys() & extra.keys()), "the extra contradicts a dependency"
    assert listed == {**core, **extra}


# --- the built wheel and sdist in fresh virtual environments ---------------------------------------------

#: What is not third-party in this venv: the kit's own editable install and the .pth files that load it.
_OURS = re.compile(r"^(atheria_kit|__editable__)|\.(pth|egg-link)$")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The wheel and sdist, built as ``make dist`` builds them, from a copy of the source tree."""
    out = tmp_path_factory.mktemp("dist")
    src = out / "src"
    shutil.copytree(REPO_ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "dist", "build", "artifacts", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache", ".ipynb_checkpoints", "bench"))
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    wheels, sdists = list(out.glob("atheria_kit-*.whl")), list(out.glob("atheria_kit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def third_party(tmp_path_factory) -> dict[str, Path]:
    """This venv's third-party packages, without the kit: a folder of links to its site-packages entries.

    Why not a plain install from the index: the dependencies (torch, JupyterLab, ...) are hundreds of MB; a
    download per test run would be slow and need the network. Why not ``--system-site-packages`` or a .pth
    to this venv's site-packages: both would also expose the kit's editable install (and its metadata, so pip
    would think the wheel is already installed). The links stand for "pip installed these dependencies"; the
    kit and everything that points at the repository are left out, so the fresh venv gets the kit from the
    wheel only.
    Jupyter's data files (lab assets, widget extensions) are linked too, without kernelspecs, which name this
    venv's interpreter.
    """
    root = tmp_path_factory.mktemp("third-party")
    site = Path(sysconfig.get_paths()["purelib"])
    packages = root / "site-packages"
    packages.mkdir()
    for entry in site.iterdir():
        if not _OURS.search(entry.name):
            (packages / entry.name).symlink_to(entry)
    jupyter = root / "share-jupyter"
    jupyter.mkdir()
    shared = Path(sys.prefix) / "share" / "jupyter"
    for entry in shared.iterdir() if shared.is_dir() else ():
        if entry.name != "kernels":
            (jupyter / entry.name).symlink_to(entry)
    etc = Path(sys.prefix) / "etc" / "jupyter"
    return {"site_packages": packages, "share_jupyter": jupyter, "etc_jupyter": etc}


def _base_python() -> str:
    return getattr(sys, "_base_executable", sys.executable)


def _give_venv_the_third_party_packages(venv: Path, third_party: dict[str, Path]) -> None:
    """What ``pip install`` of the dependencies would leave in ``venv``: importable packages, their console
    scripts and Jupyter's data files."""
    where = "import sysconfig as s; print(s.get_paths()['purelib'])"
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", where], capture_output=True, text=True,
                             check=True).stdout.strip()
    Path(purelib, "zz_third_party.pth").write_text(f"{third_party['site_packages']}\n")
    (venv / "share").mkdir(exist_ok=True)
    (venv / "share" / "jupyter").symlink_to(third_party["share_jupyter"])
    if third_party["etc_jupyter"].is_dir():
        (venv / "etc").mkdir(exist_ok=True)
        (venv / "etc" / "jupyter").symlink_to(third_party["etc_jupyter"])
    script = """
import importlib.metadata as md, os, sys
for dist in md.distributions(path=[sys.argv[1]]):
    for ep in dist.entry_points.select(group="console_scripts"):
        target = os.path.join(sys.argv[2], ep.name)
        if os.path.exists(target):
            continue
        with open(target, "w") as f:
            f.write(f"#!{sys.executable}\\nimport sys\\nfrom {ep.module} import {ep.attr.split('.')[0]}\\n"
                    f"sys.exit({ep.attr}())\\n")
        os.chmod(target, 0o755)
"""
    subprocess.run([str(venv / "bin" / "python"), "-c", script, str(third_party["site_packages"]),
                    str(venv / "bin")], check=True)


def _isolated_env(home: Path, venv: Path | None = None) -> dict[str, str]:
    """An environment that knows nothing of the repository or of this venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "PYTEST", "COV_"))}
    paths = [p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)]
    if venv is not None:
        paths.insert(0, str(venv / "bin"))
    env.update(PATH=os.pathsep.join(paths), HOME=str(home), JUPYTER_DATA_DIR=str(home / "jupyter-data"),
               JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"), MPLBACKEND="Agg",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))  # the real cache: no re-downloads
    return env


def _outputs(notebook: Path) -> list[dict]:
    return [o for c in json.loads(notebook.read_text())["cells"] for o in c.get("outputs", [])]


def _text(outputs: list[dict]) -> str:
    return "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")


@pytest.mark.install
@pytest.mark.notebook
@pytest.mark.timeout(600)
def test_the_wheel_runs_notebook_01_in_a_fresh_venv(dist, third_party, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    _give_venv_the_third_party_packages(venv, third_party)
    env = _isolated_env(tmp_path / "home", venv)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('atheria_kit'))"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "None", "the fresh venv must not see the repository's kit"

    # The notebook as a user gets it, plus a last cell that says where the kernel found the kit.
    import nbformat

    nb = nbformat.read(NOTEBOOK_01, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import atheria_kit\nprint('KIT_FILE', atheria_kit.__file__)"))
    notebook = work / NOTEBOOK_01.name
    nbformat.write(nb, notebook)

    def papermill(out: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, "-m", "papermill", notebook.name, out, "-p", "SMOKE", "True", "-p", "OUTPUT_ROOT",
             "runs", "-k", "python3", "--no-progress-bar", "--execution-timeout", "300"],
            cwd=work, env=env, capture_output=True, text=True, timeout=420)

    # No wheel anywhere: the install cell stops Run all with what to do, as one message, not a traceback.
    done = papermill("missing.ipynb")
    assert done.returncode != 0
    [error] = [o for o in _outputs(work / "missing.ipynb") if o.get("output_type") == "error"]
    assert error["ename"] == "KitNotInstalled"
    assert len(error["traceback"]) == 1
    assert error["traceback"][0].startswith("KitNotInstalled: atheria_kit is not installed")
    assert "make dist" in error["traceback"][0]

    # The wheel in the working folder: the install cell installs it, and the whole notebook runs on it.
    shutil.copy(dist["wheel"], work)
    t0 = time.monotonic()
    done = papermill("executed.ipynb")
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-4000:]
    text = _text(_outputs(work / "executed.ipynb"))
    assert f"installing atheria_kit from {work / dist['wheel'].name}" in text or \
        f"installing atheria_kit from ./{dist['wheel'].name}" in text, text[:2000]
    assert "installed atheria_kit 0.1.0" in text
    kit_file = Path(re.search(r"KIT_FILE (\S+)", text).group(1))
    assert kit_file.is_relative_to(venv), f"the kernel imported the kit from {kit_file}, not from the venv"
    print(f"notebook 01 (SMOKE, install included) ran in {elapsed:.0f} s in the fresh venv")

    # The package data and the console script came with the wheel.
    assert (kit_file.parent / "data" / "BTCUSDT_1h.csv.gz").is_file()
    cli = subprocess.run([str(venv / "bin" / "atheria"), "--help"], cwd=work, env=env, capture_output=True,
                         text=True, check=True).stdout
    for command in ("walkforward", "monitor", "replay"):
        assert command in cli


def _readme_local_commands() -> list[str]:
    """The shell lines of the README's local JupyterLab block (the ```bash block under '## Locally')."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Locally", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln.split(" #")[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


@pytest.mark.install
@pytest.mark.slow  # a fresh venv, PyPI for the isolated build, a JupyterLab server: `make test-slow` (CI runs it)
@pytest.mark.timeout(600)
def test_the_readme_local_commands_work_in_a_clean_venv(dist, third_party, tmp_path):
    commands = _readme_local_commands()
    assert commands[0].startswith("python3 -m venv .venv"), commands
    assert commands[-1] == "jupyter lab notebooks/", commands
    with tarfile.open(dist["sdist"]) as tar:
        tar.extractall(tmp_path, filter="data")
    source = next(tmp_path.glob("atheria_kit-*/"))
    assert (source / "notebooks" / NOTEBOOK_01.name).is_file(), "the sdist does not carry the notebooks"

    # `python3` is this interpreter's base, so the linked third-party packages match its version.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(_base_python())
    env = _isolated_env(tmp_path / "home")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    port = free_port()
    config = Path(env["JUPYTER_CONFIG_DIR"])
    config.mkdir(parents=True)
    # A real user's server opens a browser on port 8888; this one listens on a free port with a known token.
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"open_browser": False, "port": port, "ip": "127.0.0.1", "port_retries": 0,
                      "allow_root": True},  # CI containers run as root
        "IdentityProvider": {"token": "readme-test"}}))

    # The README's first line makes the venv; then the stand-in for downloading the dependencies (see
    # third_party); then the README's remaining lines, in one shell, as a user types them.
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands[0]], cwd=source, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _give_venv_the_third_party_packages(source / ".venv", third_party)
    script = "\n".join(commands[1:-1] + ["exec " + commands[-1]])
    server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=source, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output = read_until_line(server, f"http://127.0.0.1:{port}/", timeout=300)
        assert "does not provide the extra" not in output, output
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        # The URL is printed as the server starts listening; a refused first connection is retried (bounded) by
        # urllib3 rather than failing the test on the race.
        http = requests.Session()
        http.mount("http://", HTTPAdapter(max_retries=Retry(connect=8, backoff_factor=0.5)))
        api = f"http://127.0.0.1:{port}/api"
        auth = {"Authorization": "token readme-test"}
        listing = http.get(f"{api}/contents", headers=auth, timeout=10).json()
        assert NOTEBOOK_01.name in [item["name"] for item in listing["content"]], "not serving notebooks/"
        specs = http.get(f"{api}/kernelspecs", headers=auth, timeout=10).json()["kernelspecs"]
        spec = specs["python3"]["spec"]
        kernel_python = Path(spec["argv"][0])
        assert kernel_python.parent == source / ".venv" / "bin", f"the kernel runs {kernel_python}"
        lab = http.get(f"http://127.0.0.1:{port}/lab?token=readme-test", timeout=10)
        assert lab.status_code == 200 and "JupyterLab" in lab.text
    finally:
        stop_process_group(server)
    kit = subprocess.run([str(kernel_python), "-c", "import atheria_kit; print(atheria_kit.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(kit).is_relative_to(source), f"the venv imports the kit from {kit}, not the unpacked source"


