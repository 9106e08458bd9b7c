"""The example notebook runs headless, top to bottom, on the tiny config."""
import os

import pytest

from conftest import ROOT, TINY_YAML, assert_figure


def test_notebook_executes(data_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("DDPM_MS_NOTEBOOK_CONFIG", TINY_YAML)
    monkeypatch.setenv("DDPM_MS_NOTEBOOK_OUT", str(tmp_path / "run"))
    nb = nbformat.read(os.path.join(ROOT, "examples", "diffusion_tutorial.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(ROOT, "examples")}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "2992180" in outputs
    assert "(10, 16, 1, 28, 28)" in outputs
    for name in ("forward_diffusion.png", "loss_curve.png", "samples.png", "ddim.png", "ablation.png",
                 "inpaint_figure.png", "repaint.png", "sdedit_strengths.png", "interpolation.png"):
        assert_figure(tmp_path / "run" / name)
    assert (tmp_path / "run" / "denoising.gif").stat().st_size > 0
    kept = [c for c in nb.cells if c.cell_type == "code" and "the known half is kept exactly" in c.source][0]
    assert float(kept.outputs[0]["text"].split()[0]) < 1e-6          # inpainting kept the known pixels
