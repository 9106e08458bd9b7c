"""MindIR export: the exported graph samples what the network samples, conditional or not."""
import os

import numpy as np
import pytest

import ddpm_ms
from ddpm_ms.build import load_model
from ddpm_ms.errors import CheckpointError
from ddpm_ms.commands import run
from ddpm_ms.config import load_config
from ddpm_ms.samplers import generate
from ddpm_ms.sampling import Denoiser

from conftest import TINY_YAML


@pytest.mark.parametrize("conditional", [False, True])
def test_exported_graph_samples_like_the_network(data_dir, tmp_path, tiny_run, conditional):
    """The session's tiny run sampled with DDPM, and a class-conditional one with guided DPM-Solver++(2M): the
    exported graph against the network on MindSpore's ops and on the CPU kernels."""
    if conditional:
        cfg = load_config(TINY_YAML, [f"train.out_dir={tmp_path / 'run'}", "train.max_steps=3", "train.gif=false",
                                      "train.sample_num=2", "model.num_classes=10"])
        ckpt = ddpm_ms.Trainer.from_config(cfg).fit(progress=False)["checkpoint"]
    else:
        ckpt = tiny_run["checkpoint"]
    out = str(tmp_path / "export" / "tiny.mindir")
    assert run("export", ["--ckpt", ckpt, "--out", out]) == 0
    assert os.path.isfile(out) and os.path.isfile(out[:-7] + ".yaml")
    net, sched, exported_cfg = ddpm_ms.load_exported(out)
    assert exported_cfg == load_model(ckpt)[2] and sched.num_timesteps == 10
    labels = np.array([3, 7, 1]) if conditional else None
    kwargs = dict(seed=5, batch_size=3, labels=labels, guidance=2.0, progress=False,
                  sampler="dpm++2m" if conditional else "ddpm")
    null_class = exported_cfg.model.num_classes
    from_graph = generate(Denoiser(net, sched, null_class=null_class), (1, 28, 28), 3, **kwargs)
    with ddpm_ms.kernels.using("off"):     # the network on the same ops as the exported graph
        model = load_model(ckpt)[0]
    from_network = generate(Denoiser(model, sched, null_class=null_class), (1, 28, 28), 3, **kwargs)
    np.testing.assert_allclose(from_graph, from_network, atol=1e-5)
    fast = generate(Denoiser(load_model(ckpt)[0], sched, null_class=null_class), (1, 28, 28), 3,
                    **kwargs)     # and the network on the CPU kernels
    np.testing.assert_allclose(from_graph, fast, atol=1e-4)
    assert np.abs(from_graph).max() > 0.1


def test_export_errors_are_one_line(tmp_path, capsys):
    assert run("export", ["--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="exported network not found"):
        ddpm_ms.load_exported(str(tmp_path / "none.mindir"))
    (tmp_path / "bad.mindir").write_bytes(b"not a graph")
    (tmp_path / "bad.yaml").write_text("model:\n  dim: 8\n")
    with pytest.raises(CheckpointError, match="cannot load the exported network"):
        ddpm_ms.load_exported(str(tmp_path / "bad.mindir"))
