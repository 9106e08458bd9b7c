"""The example notebook runs headless, top to bottom, on the tiny config."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_notebook_executes(data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDPM_MS_NOTEBOOK_CONFIG", os.path.join(ROOT, "configs", "tiny.yaml"))
    monkeypatch.setenv("DDPM_MS_NOTEBOOK_OUT", str(tmp_path / "run"))
    nb = nbformat.read(os.path.join(ROOT, "examples", "diffusion_tutorial.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "examples")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "2992180" in outputs
    assert "(10, 16, 1, 28, 28)" in outputs
    for name in ("forward_diffusion.png", "loss_curve.png", "samples.png", "denoising.gif", "ddim.png", "ablation.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
