"""The --explain figures draw what they say: their numbers against direct computations."""
import numpy as np
import pytest
from mindspore import ops

from conftest import assert_figure

from ddpm_ms import Denoiser, NoiseSchedule, Recorder, generate, load_config
from ddpm_ms import explain
from ddpm_ms.viz import to_display


def test_chain_std_figure_plots_the_std_of_x_t(tiny_model, tiny_sched):
    clipped, raw = Denoiser(tiny_model, tiny_sched), Denoiser(tiny_model, tiny_sched, clip_denoised=False)
    stds = explain.chain_std({"clipped": clipped, "raw": raw}, (1, 28, 28), num=4, seed=2, sampler="ddpm")
    for name, d in (("clipped", clipped), ("raw", raw)):          # directly: record x_t and take its std
        rec = Recorder(("x_t",))
        generate(d, (1, 28, 28), 4, seed=2, batch_size=4, callback=rec, progress=False)
        np.testing.assert_allclose(stds[name], [x.std() for x in rec.stack("x_t")], rtol=1e-6)
    assert list(stds["t"]) == list(range(9, -1, -1))
    assert stds["clipped"][0] == stds["raw"][0]                  # the same x_T
    fig = explain.plot_chain_std(stds)
    lines = {l.get_label(): l for l in fig.axes[0].lines}
    np.testing.assert_array_equal(lines["clipped"].get_ydata(), stds["clipped"])
    np.testing.assert_array_equal(lines["raw"].get_xdata(), stds["t"])
    assert fig.axes[0].get_ylabel() == "pixel std of x_t" and fig.axes[0].get_xlabel().startswith("timestep")


def test_snapshots_are_consistent_predictions_and_drawn_in_place(tiny_model):
    sched = NoiseSchedule.from_name("cosine", 40)
    snap = explain.chain_snapshots(Denoiser(tiny_model, sched), (1, 28, 28), seed=1, picks=5, sampler="ddim",
                                   steps=20)
    assert list(snap["t"]) == sorted(snap["t"], reverse=True) and snap["t"][0] == 39 and snap["t"][-1] == 0
    ab = sched.np["alphas_cumprod"][snap["t"]].reshape(-1, 1, 1, 1)
    # x_0 is clipped and eps re-derived from it, so x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps holds exactly (eq. 4)
    np.testing.assert_allclose(np.sqrt(ab) * snap["x0"] + np.sqrt(1 - ab) * snap["eps"], snap["x_t"], atol=1e-4)
    assert np.abs(snap["x0"]).max() <= 1.0
    fig = explain.plot_chain_snapshots(snap)
    assert len(fig.axes) == 15 and fig.axes[1].get_title() == "predicted noise eps"
    assert fig.axes[3].get_ylabel() == f"t = {snap['t'][1]}"
    np.testing.assert_allclose(fig.axes[5].images[0].get_array(), to_display(snap["x0"][1:2])[0][..., 0], atol=1e-6)


def test_loss_by_timestep_of_a_network_that_predicts_no_noise():
    """eps = 0 everywhere: the l2 loss is E[z^2] = 1 in every bucket, whatever the images."""
    sched = NoiseSchedule.from_name("linear", 100)
    zero = Denoiser(lambda x, t: ops.zeros_like(x), sched, clip_denoised=False, jit=False)
    held = np.random.default_rng(0).uniform(-1, 1, (64, 1, 28, 28)).astype(np.float32)
    data = explain.loss_by_timestep(zero, sched.np["alphas_cumprod"], held, "l2", buckets=5)
    assert list(data["edges"]) == [0, 20, 40, 60, 80, 100]
    np.testing.assert_allclose(data["loss"], 1.0, atol=0.03)
    huber = explain.loss_by_timestep(zero, sched.np["alphas_cumprod"], held, "huber", buckets=5)["loss"]
    np.testing.assert_allclose(huber, 0.42466, atol=0.01)   # E[huber(z)] = (2Phi(1)-1)/2 + phi(1) - 1 + Phi(1)
    fig = explain.plot_loss_by_timestep(data, "l2")
    np.testing.assert_allclose([b.get_height() for b in fig.axes[0].patches], data["loss"])
    assert fig.axes[0].get_ylabel() == "l2 loss of eps prediction"


@pytest.mark.parametrize("conditional", [False, True])
def test_write_figures(tmp_path, conditional):
    import ddpm_ms
    net = ddpm_ms.Unet(dim=8, dim_mults=(1, 2), channels=1, num_classes=3 if conditional else None)
    sched = NoiseSchedule.from_name("linear", 10)
    held = np.zeros((8, 1, 28, 28), np.float32)
    cfg = load_config(None, ["model.num_classes=3"] if conditional else [])
    paths = explain.write_figures(net, sched, cfg, (1, 28, 28), held, str(tmp_path),
                                  labels=np.arange(16) % 3 if conditional else None, guidance=2.0, sampler="dpm++2m",
                                  steps=5)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["explain_steps.png", "explain_std.png", "explain_loss.png"]
    for p in paths:
        assert_figure(tmp_path / p.rsplit("/", 1)[1])
