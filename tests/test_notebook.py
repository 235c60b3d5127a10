"""examples/quickstart.ipynb runs top to bottom with the shipped models, so it cannot rot.

The notebook executes in a fresh kernel in a temporary working directory (it writes `quickstart_outputs/` there),
with one OpenMP thread and the Hub offline, as on the 2-core CI machines. About 4 minutes on 2 CPU cores.
"""
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
IMAGE_CELLS = ("sampling", "compare", "interpolation", "interpolation_by_hand", "invariance")  # cell tags


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    return "".join(o.get("text", "") if o["output_type"] == "stream" else o.get("data", {}).get("text/plain", "")
                   for o in cell.outputs)


def test_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "TOKENIZERS_PARALLELISM": "false"}
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=env)  # in resources' path, tmp_path; raises CellExecutionError on the first failing cell
    finally:
        nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # what ran, outputs included, for a failure
    print(f"quickstart.ipynb ran in {time.perf_counter() - t0:.0f} s")

    for tag in IMAGE_CELLS:
        cell = _tagged(nb, tag)
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"cell {tag!r} shows no image"
    for name in ("compare", "interpolate", "invariance"):
        assert (tmp_path / "quickstart_outputs" / f"{name}.png").is_file()
        assert (tmp_path / "quickstart_outputs" / f"{name}.json").is_file()

    report = _tagged(nb, "report")
    page = tmp_path / "quickstart_outputs" / "report" / "index.html"
    assert page.is_file(), _text(report)  # the checkout's fixture is there, so the report must not be skipped
    assert (page.parent / "report.json").is_file()
    assert str(page.resolve()) in _text(report)
