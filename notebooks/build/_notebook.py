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
