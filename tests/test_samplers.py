"""DDIM, the no-noise ablation, classifier-free guidance, label dropout and EMA, against their closed forms."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ddpm_ms import NoiseSchedule, Unet
from ddpm_ms.checkpoint import load_model_weights
from ddpm_ms.ema import EMA
from ddpm_ms.sampling import (batch_plan, ddim_coefficients, ddim_sample_loop, ddim_timesteps, ddpm_no_noise_loop,
                              generate, guidance_cond, guided_eps, p_sample_loop)
from ddpm_ms.trainer import drop_labels

SHAPE = (3, 1, 8, 8)


def _x_T(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _const_eps(x, t):
    return x * 0.3 + 0.1          # a fixed, input-dependent "network"


def test_ddim_timesteps():
    assert list(ddim_timesteps(200, 5)) == [199, 149, 100, 50, 0]
    assert list(ddim_timesteps(10, 10)) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)


def test_ddim_eta0_is_deterministic(mode):
    s = NoiseSchedule.from_name("linear", 50)
    a = ddim_sample_loop(_const_eps, s, SHAPE, seed=1, x_T=_x_T(), steps=10, eta=0.0, progress=False)
    b = ddim_sample_loop(_const_eps, s, SHAPE, seed=2, x_T=_x_T(), steps=10, eta=0.0, progress=False)
    c = ddim_sample_loop(_const_eps, s, SHAPE, seed=2, x_T=_x_T(), steps=10, eta=1.0, progress=False)
    np.testing.assert_array_equal(a, b)          # the step noise is not used at eta=0
    assert np.abs(a - c).max() > 1e-3


def test_ddim_full_steps_eta1_is_ddpm():
    s = NoiseSchedule.from_name("linear", 20)
    for t, a_t, a_prev, sigma in ddim_coefficients(s, 20, 1.0):
        assert sigma ** 2 == pytest.approx(s.np["posterior_variance"][t], rel=1e-9, abs=1e-15)
    ddim = ddim_sample_loop(_const_eps, s, SHAPE, seed=5, x_T=_x_T(), steps=20, eta=1.0, return_all=True,
                            progress=False)
    ddpm = p_sample_loop(_const_eps, s, SHAPE, seed=5, x_T=_x_T(), return_all=True, progress=False)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_one_step_closed_form(clip):
    s = NoiseSchedule.from_name("cosine", 100)
    x = _x_T(3)
    out = ddim_sample_loop(_const_eps, s, SHAPE, seed=0, x_T=x, steps=4, eta=0.0, return_all=True,
                           progress=False, clip_denoised=clip)[0]
    t, t_prev = ddim_timesteps(100, 4)[:2]
    ab, ab_prev = s.np["alphas_cumprod"][t], s.np["alphas_cumprod"][t_prev]
    eps = x * 0.3 + 0.1
    x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    if clip:   # x_0 clipped to [-1, 1], eps re-derived from it (eq. 4)
        assert np.abs(x0).max() > 1.5          # the clip is exercised
        x0 = np.clip(x0, -1, 1)
        eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    np.testing.assert_allclose(out, np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps, rtol=1e-4, atol=1e-5)


def test_ddim_skipped_steps_with_partial_eta_closed_form():
    """4 of 100 steps with eta 0.5, every frame against Song et al. 2021 eq. 12 with sigma from eq. 16."""
    s = NoiseSchedule.from_name("cosine", 100)
    frames = ddim_sample_loop(_const_eps, s, SHAPE, seed=11, x_T=_x_T(5), steps=4, eta=0.5, return_all=True,
                              progress=False, clip_denoised=False)
    rng, x = np.random.default_rng(11), _x_T(5).astype(np.float64)    # the sampler draws one z per step
    ab = s.np["alphas_cumprod"]
    taus = [99, 66, 33, 0]
    assert list(ddim_timesteps(100, 4)) == taus
    for k, t in enumerate(taus):
        a_t, a_prev = ab[t], (ab[taus[k + 1]] if k + 1 < 4 else 1.0)
        sigma = 0.5 * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        assert (sigma > 0) == (k + 1 < 4)                               # no noise into x_0
        eps = x * 0.3 + 0.1
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        z = rng.standard_normal(SHAPE, dtype=np.float32)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * z
        np.testing.assert_allclose(frames[k], x, rtol=1e-4, atol=1e-4, err_msg=f"step {k}")


def test_ddpm_clipped_step_is_the_posterior_mean_of_clipped_x0(mode):
    s = NoiseSchedule.from_name("linear", 10)
    x = _x_T(4)
    out = ddpm_no_noise_loop(_const_eps, s, SHAPE, seed=0, x_T=x, return_all=True, progress=False)[0]
    plain = ddpm_no_noise_loop(_const_eps, s, SHAPE, seed=0, x_T=x, return_all=True, progress=False,
                               clip_denoised=False)[0]
    t = 9
    b, ab, ab_prev = s.np["betas"][t], s.np["alphas_cumprod"][t], s.np["alphas_cumprod"][t - 1]
    x0 = (x - np.sqrt(1 - ab) * (x * 0.3 + 0.1)) / np.sqrt(ab)
    assert np.abs(x0).max() > 1.5

    def mean(x_0):   # eq. 7
        return (np.sqrt(ab_prev) * b * x_0 + np.sqrt(1 - b) * (1 - ab_prev) * x) / (1 - ab)

    np.testing.assert_allclose(out, mean(np.clip(x0, -1, 1)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(plain, mean(x0), rtol=1e-4, atol=1e-4)      # eq. 7 == eq. 11 without the clip


def test_ddim_with_oracle_recovers_x0():
    s = NoiseSchedule.from_name("linear", 200)
    x0 = np.random.default_rng(7).uniform(-1, 1, SHAPE).astype(np.float32)
    sab, s1mab = s.sqrt_alphas_cumprod.asnumpy(), s.sqrt_one_minus_alphas_cumprod.asnumpy()

    def oracle(x, t):   # the true noise of x_t for this x0
        i = int(t.asnumpy()[0])
        return (x - float(sab[i]) * Tensor(x0)) / float(s1mab[i])

    out = ddim_sample_loop(oracle, s, SHAPE, seed=0, steps=20, eta=0.0, progress=False, jit=False)
    np.testing.assert_allclose(out, x0, atol=1e-3)


def test_no_noise_ablation_uses_ddpm_means_only():
    s = NoiseSchedule.from_name("linear", 10)
    a = ddpm_no_noise_loop(_const_eps, s, SHAPE, seed=1, x_T=_x_T(), progress=False, clip_denoised=False)
    b = ddpm_no_noise_loop(_const_eps, s, SHAPE, seed=2, x_T=_x_T(), progress=False, clip_denoised=False)
    c = p_sample_loop(_const_eps, s, SHAPE, seed=1, x_T=_x_T(), progress=False, clip_denoised=False)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    x = _x_T()   # closed form: iterate the DDPM mean
    for t in reversed(range(10)):
        b_t, ab_t = s.np["betas"][t], s.np["alphas_cumprod"][t]
        x = (x - b_t / np.sqrt(1 - ab_t) * (x * 0.3 + 0.1)) / np.sqrt(1 - b_t)
    np.testing.assert_allclose(a, x, rtol=1e-4, atol=1e-4)


def test_guidance_interpolates_between_uncond_and_cond(mode):
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2), num_classes=10)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    t = Tensor(np.array([3, 7], np.int32))
    y = np.array([9, 2], np.int32)
    cond = net(x, t, Tensor(y)).asnumpy()
    uncond = net(x, t, Tensor(np.full(2, 10, np.int32))).asnumpy()
    assert np.abs(cond - uncond).max() > 1e-5
    eps = guided_eps(net, 10)
    np.testing.assert_allclose(eps(x, t, *guidance_cond(y, 0.0)).asnumpy(), uncond, atol=1e-5)
    np.testing.assert_allclose(eps(x, t, *guidance_cond(y, 1.0)).asnumpy(), cond, atol=1e-5)
    np.testing.assert_allclose(eps(x, t, *guidance_cond(y, 3.0)).asnumpy(), uncond + 3 * (cond - uncond), atol=1e-4)


def test_compiled_step_is_reused_and_reads_new_weights(mode):
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2))
    net.set_train(False)
    s = NoiseSchedule.from_name("linear", 10)
    a = ddim_sample_loop(net, s, SHAPE, seed=0, steps=3, progress=False)
    compiled = dict(net._ddpm_ms_sampling_cache)
    assert len(compiled) == 1
    np.testing.assert_array_equal(ddim_sample_loop(net, s, SHAPE, seed=0, steps=3, progress=False), a)
    assert net._ddpm_ms_sampling_cache == compiled          # the same compiled step, not a new one
    load_model_weights(net, {p.name: Tensor(p.asnumpy() * 0.5) for p in net.trainable_params()})
    b = ddim_sample_loop(net, s, SHAPE, seed=0, steps=3, progress=False)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(b, ddim_sample_loop(net, s, SHAPE, seed=0, steps=3, progress=False, jit=False),
                               atol=1e-4)


def test_guided_generate_matches_eager_across_batches():
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2), num_classes=10)
    net.set_train(False)
    s = NoiseSchedule.from_name("linear", 10)
    kwargs = dict(batch_size=2, sampler="ddim", steps=3, labels=np.array([9, 2, 5]), guidance=3.0, null_class=10,
                  progress=False)
    names = [p.name for p in net.trainable_params()]
    out = generate(net, s, (1, 8, 8), 3, **kwargs)
    assert [p.name for p in net.trainable_params()] == names     # checkpoints keep their keys
    assert guided_eps(net, 10) is guided_eps(net, 10)
    assert len(guided_eps(net, 10)._ddpm_ms_sampling_cache) == 1
    np.testing.assert_allclose(out, generate(net, s, (1, 8, 8), 3, jit=False, **kwargs), atol=1e-4)
    swapped = dict(kwargs, labels=np.array([2, 9, 5]))
    assert np.abs(out[:2] - generate(net, s, (1, 8, 8), 3, **swapped)[:2]).max() > 1e-4


def test_batch_plan():
    assert batch_plan(100, 64) == (2, 50)
    assert batch_plan(64, 64) == (1, 64)
    assert batch_plan(5, 2) == (3, 2)
    assert batch_plan(3, 10) == (1, 3)
    for num, bs in [(1, 1), (7, 3), (1000, 64), (65, 64)]:
        count, size = batch_plan(num, bs)
        assert size <= bs and count * size >= num > (count - 1) * size
    with pytest.raises(ValueError):
        batch_plan(0, 4)


def test_generate_uses_one_batch_shape_and_the_batch_seeds():
    shapes = []

    def eps(x, t):
        shapes.append(tuple(x.shape))
        return _const_eps(x, t)

    s = NoiseSchedule.from_name("linear", 10)
    kwargs = dict(sampler="ddim", steps=2, eta=1.0, progress=False, jit=False)
    out = generate(eps, s, (1, 8, 8), 5, seed=3, batch_size=2, **kwargs)
    assert out.shape == (5, 1, 8, 8)
    assert set(shapes) == {(2, 1, 8, 8)}                  # the remainder batch is padded, not a new shape
    batches = [ddim_sample_loop(_const_eps, s, (2, 1, 8, 8), seed=3 + i, steps=2, eta=1.0, progress=False, jit=False)
               for i in range(3)]
    np.testing.assert_allclose(out, np.concatenate(batches)[:5], atol=1e-6)
    with pytest.raises(ValueError, match="label for each"):      # padding must not hide missing labels
        generate(eps, s, (1, 8, 8), 5, batch_size=2, labels=np.arange(3), null_class=10, **kwargs)


def test_label_dropout_rate():
    labels = np.arange(20000) % 10
    dropped = [(drop_labels(0, step, labels, 0.1, 10).asnumpy() == 10).mean() for step in range(3)]
    for frac in dropped:
        assert abs(frac - 0.1) < 0.01        # 5 sigma of a binomial with n=20000
    kept = drop_labels(0, 0, labels, 0.1, 10).asnumpy()
    np.testing.assert_array_equal(kept[kept != 10], labels[kept != 10])
    assert (drop_labels(0, 0, labels, 0.0, 10).asnumpy() == labels).all()


class _Toy(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([2.0, -4.0], np.float32)), name="w")

    def construct(self, x):
        return x * self.w


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_closed_form(warmup):
    toy = _Toy()
    ema = EMA(toy, decay=0.9, warmup=warmup)
    s0, c = np.array([2.0, -4.0]), np.array([1.0, 3.0])
    toy.w.set_data(Tensor(c.astype(np.float32)))
    for _ in range(5):
        ema.update()
    if warmup:
        expected = s0.copy()
        for n in range(5):
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * c
    else:
        expected = 0.9 ** 5 * s0 + (1 - 0.9 ** 5) * c
    np.testing.assert_allclose(ema.shadow[0].asnumpy(), expected, rtol=1e-5)
    assert int(ema.num_updates.asnumpy()) == 5
    with ema.swapped():
        np.testing.assert_allclose(toy.w.asnumpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(toy.w.asnumpy(), c.astype(np.float32))


def test_ema_swap_is_seen_by_graphs_compiled_before_it(mode):
    """The train step and cached sampling steps are compiled once; the swap must reach their weights."""
    toy = _Toy()
    ema = EMA(toy, decay=0.5, warmup=False)
    x = Tensor(np.ones(2, np.float32))

    def forward(x):
        return toy(x)

    def train_update():            # an optimizer-like in-place update, compiled once
        ops.assign(toy.w, toy.w + 1.0)
        return toy.w

    forward, train_update = ms.jit(forward), ms.jit(train_update)
    np.testing.assert_allclose(forward(x).asnumpy(), [2.0, -4.0])
    train_update()
    ema.update()                   # shadow = 0.5 [2, -4] + 0.5 [3, -3]
    with ema.swapped():
        np.testing.assert_allclose(forward(x).asnumpy(), [2.5, -3.5])
    np.testing.assert_allclose(forward(x).asnumpy(), [3.0, -3.0])
    train_update()
    np.testing.assert_allclose(toy.w.asnumpy(), [4.0, -2.0])
    np.testing.assert_allclose(forward(x).asnumpy(), [4.0, -2.0])
