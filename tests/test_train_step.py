import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import amp, nn

from ddpm_ms import NoiseSchedule, TrainStep, Unet, build_run, kernels, load_config
from ddpm_ms.batches import step_noise
from ddpm_ms.params import assign_parameters

from conftest import TINY, batch


def _run(jit, loss_scale=65536.0, scale_window=1000, lr=1e-3):
    ms.set_seed(0)
    model = Unet(**TINY)
    sched = NoiseSchedule.from_name("linear", 10)
    opt = nn.Adam(model.trainable_params(), learning_rate=lr)
    scaler = amp.DynamicLossScaler(loss_scale, 2, scale_window)
    return model, opt, scaler, TrainStep(model, sched, opt, scaler, "huber", jit=jit)


def _params(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_compiled_steps_lower_the_loss(mode):
    _, _, _, step = _run(jit=True)
    x0 = batch((4, 1, 28, 28))
    t, noise = step_noise(0, 0, x0.shape, 10)
    losses = [float(step(x0, t, noise)[0].asnumpy()) for _ in range(6)]
    assert losses[-1] < losses[0] * 0.9, losses


def test_compiled_and_eager_step_agree(mode):
    x0 = batch((4, 1, 28, 28))
    t, noise = step_noise(0, 3, x0.shape, 10)
    results = []
    for jit in (True, False):
        model, _, _, step = _run(jit=jit)
        loss0 = float(step(x0, t, noise)[0].asnumpy())
        loss1 = float(step(x0, t, noise)[0].asnumpy())
        results.append((loss0, loss1, _params(model)))
    (a0, a1, pa), (b0, b1, pb) = results
    assert a0 == pytest.approx(b0, rel=1e-5)
    assert a1 == pytest.approx(b1, rel=1e-4)
    for name in pa:
        np.testing.assert_allclose(pa[name], pb[name], atol=1e-5, err_msg=name)


def test_loss_scaler_skips_update_and_halves_on_inf(mode):
    model, opt, scaler, step = _run(jit=True, scale_window=2)
    before = _params(model)
    x_bad = batch((4, 1, 28, 28)).asnumpy()
    x_bad[0, 0, 0, 0] = np.inf
    t, noise = step_noise(0, 0, x_bad.shape, 10)
    _, finite = step(ms.Tensor(x_bad), t, noise)
    assert not bool(finite.asnumpy())
    assert float(scaler.scale_value.asnumpy()) == 32768.0
    after = _params(model)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # scale_window finite steps later the scale doubles back, and the params move
    x0 = batch((4, 1, 28, 28))
    for _ in range(2):
        _, finite = step(x0, t, noise)
        assert bool(finite.asnumpy())
    assert float(scaler.scale_value.asnumpy()) == 65536.0
    assert any(np.abs(before[n] - p.asnumpy()).max() > 0 for n, p in
               ((p.name, p) for p in model.trainable_params()))


def _optimizer_state(model, opt, scaler):
    state = _params(model)
    state.update({p.name: p.asnumpy().copy() for p in (*opt.moment1, *opt.moment2, opt.beta1_power,
                                                        opt.beta2_power, opt.global_step)})
    state.update(scale=scaler.scale_value.asnumpy().copy(), counter=scaler.counter.asnumpy().copy())
    return state


def test_fused_adam_step_equals_adam_and_the_loss_scaler(mode):
    """The one-kernel optimizer step against nn.Adam + DynamicLossScaler (MindSpore's ops): six steps of a per-step
    LR, one of them an overflow (an inf in the batch: skipped, the scale halved, global_step not advanced), and the
    scale doubling back after two finite steps. Weights, both moments, beta powers, step, scale and counter agree to
    float32 rounding. Compiled under GRAPH_MODE, eager under PYNATIVE_MODE."""
    if kernels.library() is None and not os.environ.get("CI"):
        pytest.skip("the kernel library is unavailable")
    lr = [1e-3 * 0.8 ** i for i in range(8)]
    runs = []
    for fused in (True, False):
        model, opt, scaler, _ = _run(jit=False, scale_window=2, lr=lr)
        with kernels.using("onednn" if fused else "off"):   # the model's layers are the same kernels in both
            step = TrainStep(model, NoiseSchedule.from_name("linear", 10), opt, scaler, "huber",
                             jit=mode == "graph")
        assert step.fused == fused
        start, losses = _params(model), []
        for i in range(6):
            x0 = batch((4, 1, 16, 16), seed=i).asnumpy()
            if i == 2:
                x0[0, 0, 0, 0] = np.inf
            t, noise = step_noise(0, i, x0.shape, 10)
            loss, finite = step(ms.Tensor(x0), t, noise)
            losses.append((float(loss.asnumpy()) if i != 2 else None, bool(finite.asnumpy())))
        runs.append((losses, _optimizer_state(model, opt, scaler)))
        assert all(np.abs(start[n] - v).max() > 1e-5 for n, v in _params(model).items())   # every weight moved
    (fused_losses, a), (plain_losses, b) = runs
    assert [f for _, f in fused_losses] == [True, True, False, True, True, True] == [f for _, f in plain_losses]
    assert a["global_step"] == 5 and float(a["scale"]) == 131072.0 and int(a["counter"]) == 1
    for (la, _), (lb, _) in zip(fused_losses, plain_losses):
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-7) if la is not None else lb is None
    for name in b:
        np.testing.assert_allclose(a[name], b[name], rtol=2e-5, atol=1e-7, err_msg=name)


def test_loss_scale_does_not_change_the_update():
    """Scaled by 1 or 1024, the unscaled gradients and a plain SGD update are the same.

    SGD moves each weight by lr * grad, so a missing or doubled unscale would move it 1024x as far (Adam would
    hide that: its step is nearly invariant to the gradient's scale).
    """
    x0 = batch((4, 1, 28, 28))
    t, noise = step_noise(0, 1, x0.shape, 10)
    ms.set_seed(0)
    model = Unet(**TINY)
    before = _params(model)
    scaler = amp.DynamicLossScaler(1.0, 2, 1000)
    opt = nn.SGD(model.trainable_params(), learning_rate=0.1)
    step = TrainStep(model, NoiseSchedule.from_name("linear", 10), opt, scaler, "huber", jit=True)
    grads, finals = [], []
    for scale in (1.0, 1024.0):   # one compiled step: the scale and the weights are Parameters, set in place
        assign_parameters([(scaler.scale_value, np.float32(scale))] +
                          [(p, before[p.name]) for p in model.trainable_params()])
        grads.append([g.asnumpy() for g in step.gradients(x0, t, noise)[1]])
        assert all(np.array_equal(before[n], v) for n, v in _params(model).items())   # gradients() changed nothing
        step(x0, t, noise)
        finals.append({n: v - before[n] for n, v in _params(model).items()})
    for g1, g1024 in zip(*grads):
        np.testing.assert_allclose(g1024, g1, rtol=1e-5, atol=1e-7 * np.abs(g1).max())
    assert sum(np.abs(moved).max() > 0 for moved in finals[0].values()) > len(finals[0]) // 2   # the step moved
    for name, moved in finals[0].items():
        np.testing.assert_allclose(finals[1][name], moved, rtol=1e-4, atol=1e-6 * np.abs(moved).max() + 1e-12,
                                   err_msg=name)


def test_build_run_from_config():
    cfg = load_config(None, ["model.dim=8", "model.dim_mults=[1,2]", "diffusion.timesteps=10",
                             "train.epochs=2", "train.lr=1e-4", "train.min_lr=1e-7"])
    run = build_run(cfg, steps_per_epoch=5)
    lrs = run.optimizer.learning_rate.learning_rate.asnumpy()
    assert lrs.shape == (10,)
    # nn.cosine_decay_lr decays once per epoch: lr_e = min + (max - min)(1 + cos(pi e / E)) / 2
    np.testing.assert_allclose(lrs[:5], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(lrs[5:], 1e-7 + 0.5 * (1e-4 - 1e-7), rtol=1e-5)
    assert run.sched.num_timesteps == 10
    assert float(run.loss_scaler.scale_value.asnumpy()) == 65536.0


def test_step_noise_is_a_function_of_seed_and_step():
    t1, n1 = step_noise(0, 5, (2, 1, 4, 4), 10)
    t2, n2 = step_noise(0, 5, (2, 1, 4, 4), 10)
    t3, n3 = step_noise(0, 6, (2, 1, 4, 4), 10)
    np.testing.assert_array_equal(n1.asnumpy(), n2.asnumpy())
    assert not np.array_equal(n1.asnumpy(), n3.asnumpy())
    assert t1.dtype == ms.int32 and t1.asnumpy().max() < 10
