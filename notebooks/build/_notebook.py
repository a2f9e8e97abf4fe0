"""What every notebook build script shares: the cell constructors, the Colab/Kaggle metadata and the writer.

Run a build script (e.g. ``.venv/bin/python notebooks/build/04.py``); it writes its notebook next to this folder,
without outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell

#: Colab opens the notebook on a GPU runtime, Kaggle with a GPU and internet (for the install cell).
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
    "kaggle": {"accelerator": "gpu", "isGpuEnabled": True, "isInternetEnabled": True},
}


#: The install cell every notebook runs right after its parameters cell (so ``KIT_SOURCE`` can be a parameter).
#: Self-contained: it runs before the kit can be imported. Its functions are tested on fake Drive/Kaggle folders.
INSTALL_SOURCE = r'''# Installs atheria_kit when it is not importable yet, and does nothing when it is (locally, or on a second Run all).
# KIT_SOURCE (parameters cell): a wheel or a source folder, a pip requirement or a git URL. When it is None, the
# newest atheria_kit-*.whl found in Google Drive (MyDrive/atheria/), in the attached Kaggle datasets
# (/kaggle/input/...) or in the working folder is installed. pip keeps Colab's and Kaggle's own CUDA torch.
import glob, importlib, importlib.util, os, re, socket, subprocess, sys

DRIVE_WHEEL_DIR = "/content/drive/MyDrive/atheria"
KAGGLE_INPUT_DIR = "/kaggle/input"
WHEEL_PATTERN = "atheria_kit-*.whl"


class KitNotInstalled(Exception):
    def _render_traceback_(self):  # IPython shows the message alone: what to do, not a traceback
        return [f"KitNotInstalled: {self}"]


def _wheel_version(path):
    version = os.path.basename(path).split("-")[1]
    try:
        from packaging.version import Version
        return (Version(version),)
    except Exception:  # no packaging, or a name it cannot parse: compare the numbers in it
        return (tuple(int(n) for n in re.findall(r"\d+", version)),)


def wheels_in(folder, depth=0):
    """The kit's wheels in ``folder`` and, with ``depth``, in its subfolders that many levels down."""
    found = []
    for level in range(depth + 1):
        found += glob.glob(os.path.join(glob.escape(folder), *["*"] * level, WHEEL_PATTERN))
    return sorted(p for p in found if os.path.isfile(p))


def find_kit_source(kit_source=None, *, installed=False, drive_dir=None, kaggle_input=None, cwd="."):
    """Decide what to install: ("skip" | "install" | "missing" | "bad", what to pass to pip or None, message)."""
    drive_dir = DRIVE_WHEEL_DIR if drive_dir is None else drive_dir
    kaggle_input = KAGGLE_INPUT_DIR if kaggle_input is None else kaggle_input
    if installed:
        return "skip", None, "atheria_kit is already installed: nothing to install"
    if isinstance(kit_source, str) and not kit_source.strip():
        kit_source = None
    if kit_source is not None:
        source = os.path.expanduser(str(kit_source).strip())
        if os.path.isdir(source) and not any(os.path.exists(os.path.join(source, f)) for f in ("pyproject.toml", "setup.py")):
            wheels = wheels_in(source)
            if not wheels:
                return "bad", None, (f"KIT_SOURCE={kit_source!r} is a folder without the kit's source (pyproject.toml) "
                                     f"or a wheel ({WHEEL_PATTERN}); expected a wheel, a source folder, a pip "
                                     f"requirement or a git URL")
            source = max(wheels, key=_wheel_version)
        elif not os.path.exists(source) and (source.endswith(".whl") or source.startswith(("/", "./", "../", "~"))):
            return "bad", None, (f"KIT_SOURCE={kit_source!r} does not exist; expected a wheel, a source folder, "
                                 f"a pip requirement or a git URL")
        return "install", source, f"installing atheria_kit from {source} (KIT_SOURCE)"
    # Kaggle mounts a dataset at /kaggle/input/<slug>/ (some layouts add an owner or version folder or two).
    places = [(drive_dir, 0, "Google Drive"), (kaggle_input, 3, "attached Kaggle datasets"),
              (cwd, 0, "the working folder")]
    wheels = [w for folder, depth, _ in places if os.path.isdir(folder) for w in wheels_in(folder, depth)]
    if wheels:
        best = max(wheels, key=_wheel_version)  # ties: the first place in the order above
        more = f" (the newest of {len(wheels)} wheels found)" if len(wheels) > 1 else ""
        return "install", best, f"installing atheria_kit from {best}{more}"
    looked = "\n".join(f"  {os.path.abspath(folder)}{'/...' if depth else ''}  ({what})" for folder, depth, what in places)
    return "missing", None, f"""atheria_kit is not installed, and no wheel ({WHEEL_PATTERN}) was found in:
{looked}
To install it:
  1. Build the wheel where you have the kit's source: `make dist` (or `python -m build`) writes
     dist/atheria_kit-<version>-py3-none-any.whl.
  2. Colab: upload the wheel to MyDrive/atheria/ in Google Drive.
     Kaggle: upload it as a dataset (Datasets > New Dataset), then add that dataset to this notebook
     (Add Input); this works with Internet off.
     Anywhere: put it in the working folder, or set KIT_SOURCE in the parameters cell to the wheel, the
     source folder, or a pip requirement or git URL that this machine can reach.
  3. Run all again."""


def pip_command(source, online=True):
    """The pip call for ``source``; offline, pip may use only the wheels next to a local wheel."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", source]
    if not online and source.endswith(".whl") and os.path.isfile(source):
        cmd[4:4] = ["--no-index", "--find-links", os.path.dirname(os.path.abspath(source))]
    return cmd


def _online(host="pypi.org", port=443, timeout=3.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _mount_drive_if_on_colab():
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.path.isdir(DRIVE_WHEEL_DIR.rsplit("/", 1)[0]):
        return
    try:
        from google.colab import drive
    except ImportError:
        return  # not Colab
    try:
        drive.mount(DRIVE_WHEEL_DIR.split("/MyDrive")[0])
    except Exception as e:  # refused or failed: the other places are still searched
        print(f"Google Drive not mounted ({e}); looking for the wheel elsewhere")


def install_kit(kit_source=None):
    installed = importlib.util.find_spec("atheria_kit") is not None
    if not installed and kit_source is None:
        _mount_drive_if_on_colab()
    action, source, message = find_kit_source(kit_source, installed=installed)
    if action == "skip":
        import atheria_kit
        print(f"atheria_kit {atheria_kit.__version__} is installed ({os.path.dirname(atheria_kit.__file__)})")
        return
    if action != "install":
        raise KitNotInstalled(message)
    print(message)
    online = _online()
    done = subprocess.run(pip_command(source, online), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        hint = ("Internet is off: pip may use only the wheels in the same folder as the kit's wheel. Add the "
                "missing package's wheel there (pip download NAME), or switch Internet on (Settings > Internet)."
                if not online else "Check KIT_SOURCE and the message above, then Run all again.")
        raise KitNotInstalled(f"pip could not install {source}:\n{tail}\n{hint}")
    importlib.invalidate_caches()
    if importlib.util.find_spec("atheria_kit") is None:
        raise KitNotInstalled("atheria_kit was installed but this kernel does not see it yet: restart the runtime "
                              "(Colab: Runtime > Restart session; Kaggle: Run > Restart & clear cell outputs) "
                              "and Run all again")
    import atheria_kit
    print(f"installed atheria_kit {atheria_kit.__version__}")


if __name__ == "__main__":  # False only when these functions are imported from the cell's text, as the tests do
    install_kit(globals().get("KIT_SOURCE"))'''


def install_cell():
    """The shared install cell; place it right after the parameters cell."""
    return code(INSTALL_SOURCE)


def write(cells: list, filename: str) -> Path:
    """Write ``cells`` as ``notebooks/<filename>`` with the shared metadata; returns the path."""
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
    nb = nbf.v4.new_notebook(cells=cells)
    nb.metadata = dict(METADATA)
    out = Path(__file__).resolve().parents[1] / filename
    nbf.write(nb, out)
    print(f"wrote {out}")
    return out
