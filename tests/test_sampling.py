"""The Denoiser: the compiled network around the numpy samplers: its objectives, classifier-free guidance,
clipping, its graph reading new weights, and generate/sample on a real U-Net."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from ddpm_ms import NoiseSchedule, Unet, sample
from ddpm_ms.checkpoint import load_model_weights
from ddpm_ms.samplers import SAMPLERS, Recorder, generate
from ddpm_ms.sampling import Denoiser

SHAPE = (3, 1, 8, 8)


def _x_T(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _oracle(sched, x0, objective="eps"):
    """A Denoiser whose network returns the exact target of ``objective`` at x_t for this x0: the noise from
    eq. 4 solved for eps, then eps, x0 or v = sqrt(ab) eps - sqrt(1 - ab) x0 written out here in numpy."""
    sab, s1mab = sched.np["sqrt_alphas_cumprod"], sched.np["sqrt_one_minus_alphas_cumprod"]

    def net(x, t):
        i = int(t.asnumpy()[0])
        eps = (x.asnumpy() - sab[i] * x0) / s1mab[i]
        target = {"eps": eps, "x0": x0, "v": sab[i] * eps - s1mab[i] * x0}[objective]
        return Tensor(np.broadcast_to(target, x.shape).astype(np.float32))

    return Denoiser(net, sched, clip_denoised=False, jit=False, objective=objective)


@pytest.mark.parametrize("clip", [False, True])
def test_denoiser_clips_x0_and_rederives_eps(clip):
    """Denoiser(network predicting eps): x0 by eq. 4; clipped to [-1, 1] with eps re-derived (improved-diffusion)."""
    s = NoiseSchedule.from_name("cosine", 100)
    x = _x_T(3)
    x0, eps = Denoiser(lambda x_t, t: x_t * 0.3 + 0.1, s, clip_denoised=clip, jit=False)(x, 99)
    ab = s.np["alphas_cumprod"][99]
    want_eps = x * 0.3 + 0.1
    want_x0 = (x - np.sqrt(1 - ab) * want_eps) / np.sqrt(ab)
    if clip:
        assert np.abs(want_x0).max() > 1.5          # the clip is exercised
        want_x0 = np.clip(want_x0, -1, 1)
        want_eps = (x - np.sqrt(ab) * want_x0) / np.sqrt(1 - ab)
    np.testing.assert_allclose(x0, want_x0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eps, want_eps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_oracle_recovers_x0_with_every_objective(objective, name):
    """A network that returns the true eps, x0 or v: every sampler lands on x0 (the cosine schedule reaches
    alpha_bar ~ 6e-9 at t = T-1, where x0 and eps are hardest to recover from one another)."""
    s = NoiseSchedule.from_name("cosine", 100)
    x0 = np.random.default_rng(8).uniform(-1, 1, SHAPE).astype(np.float32)
    out = generate(_oracle(s, x0, objective), SHAPE[1:], 3, batch_size=3, sampler=name, steps=20, progress=False)
    np.testing.assert_allclose(out, x0, atol=2e-3)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_denoiser_from_config_reads_the_objective(objective):
    """A checkpoint's config decides how the network's output is read: the same output means eps, x0 or v."""
    from ddpm_ms.config import load_config
    s = NoiseSchedule.from_name("linear", 10)
    cfg = load_config(None, ["diffusion.timesteps=10", f"diffusion.objective={objective}"])
    x = _x_T(1)
    out = np.full_like(x, 0.25)
    x0, eps = Denoiser.from_config(lambda x_t, t: Tensor(out), s, cfg, clip_denoised=False, jit=False)(x, 6)
    a, b = s.np["sqrt_alphas_cumprod"][6], s.np["sqrt_one_minus_alphas_cumprod"][6]
    want_x0 = {"eps": (x - b * out) / a, "x0": out, "v": a * x - b * out}[objective]
    np.testing.assert_allclose(x0, want_x0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x, a * x0 + b * eps, rtol=1e-5, atol=1e-5)   # eq. 4 holds for the pair


@pytest.fixture(scope="module")
def cond_net():
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2), num_classes=10)
    net.set_train(False)
    return net


def test_guidance_interpolates_between_uncond_and_cond(mode, cond_net):
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t, y = np.array([3, 7], np.int32), np.array([9, 2], np.int32)
    cond = cond_net(Tensor(x), Tensor(t), Tensor(y)).asnumpy()
    uncond = cond_net(Tensor(x), Tensor(t), Tensor(np.full(2, 10, np.int32))).asnumpy()
    d = Denoiser(cond_net, NoiseSchedule.from_name("linear", 10), clip_denoised=False, null_class=10)
    for w, want in ((0.0, uncond), (1.0, cond), (3.0, uncond + 3.0 * (cond - uncond))):
        np.testing.assert_allclose(d(x, t, y, w)[1], want, rtol=1e-4, atol=1e-5)


def test_guidance_on_an_interval_guides_only_its_timesteps(cond_net):
    """Guidance(w, (lo, hi)) is w on lo..hi and the conditional model alone (w = 1) elsewhere."""
    from ddpm_ms.samplers import Guidance
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8)).astype(np.float32)
    y = np.array([4, 7], np.int32)
    d = Denoiser(cond_net, NoiseSchedule.from_name("linear", 10), clip_denoised=False, null_class=10)
    g = Guidance(3.0, (4, 6))
    for t, w in ((3, 1.0), (4, 3.0), (6, 3.0), (7, 1.0)):
        np.testing.assert_allclose(d(x, t, y, g)[1], d(x, t, y, w)[1], rtol=1e-5, atol=1e-6)
    cond = cond_net(Tensor(x), Tensor(np.full(2, 7, np.int32)), Tensor(y)).asnumpy()
    np.testing.assert_allclose(d(x, 7, y, g)[1], cond, rtol=1e-4, atol=1e-5)
    assert np.abs(d(x, 5, y, g)[1] - cond).max() > 1e-3          # w = 3 on the interval: not the conditional


@pytest.mark.parametrize("sampler,objective", [("ddim", "eps"), ("dpm++2m", "eps"), ("ddpm", "x0"), ("ddim", "v")])
def test_guidance_0_and_1_sample_like_the_unconditional_and_conditional_model(cond_net, sampler, objective):
    s = NoiseSchedule.from_name("linear", 10)
    y = np.array([9, 2, 5], np.int32)
    guided = Denoiser(cond_net, s, null_class=10, objective=objective)
    kwargs = dict(batch_size=3, sampler=sampler, steps=4, progress=False)
    def with_labels(labels):     # the network with one fixed label set, no guidance
        fixed = Tensor(labels)

        def eps(x, t):
            return cond_net(x, t, fixed)

        return eps

    for w, labels in ((0.0, np.full(3, 10, np.int32)), (1.0, y)):
        plain = Denoiser(with_labels(labels), s, objective=objective, jit=False)   # eager: no second compile
        np.testing.assert_allclose(generate(guided, (1, 8, 8), 3, labels=y, guidance=w, **kwargs),
                                   generate(plain, (1, 8, 8), 3, **kwargs), rtol=1e-4, atol=1e-5)


def test_denoiser_graph_reads_new_weights_and_matches_eager(cond_net):
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2))
    net.set_train(False)
    s = NoiseSchedule.from_name("linear", 10)
    d = Denoiser(net, s)
    a = generate(d, (1, 8, 8), 3, steps=3, sampler="ddim", progress=False)
    np.testing.assert_array_equal(generate(d, (1, 8, 8), 3, steps=3, sampler="ddim", progress=False), a)
    load_model_weights(net, {p.name: Tensor(p.asnumpy() * 0.5) for p in net.trainable_params()})
    b = generate(d, (1, 8, 8), 3, steps=3, sampler="ddim", progress=False)     # the same Denoiser, new weights
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(b, generate(Denoiser(net, s, jit=False), (1, 8, 8), 3, steps=3, sampler="ddim",
                                           progress=False), atol=1e-4)
    assert not [k for k in vars(net) if "sampling" in k]                    # nothing cached on the user's model


def test_guided_generate_matches_eager_across_batches(cond_net):
    s = NoiseSchedule.from_name("linear", 10)
    kwargs = dict(batch_size=2, sampler="ddim", steps=3, labels=np.array([9, 2, 5]), guidance=3.0, progress=False)
    names = [p.name for p in cond_net.trainable_params()]
    guided = Denoiser(cond_net, s, null_class=10)
    out = generate(guided, (1, 8, 8), 3, **kwargs)
    assert [p.name for p in cond_net.trainable_params()] == names     # checkpoints keep their keys
    np.testing.assert_allclose(out, generate(Denoiser(cond_net, s, null_class=10, jit=False), (1, 8, 8), 3,
                                             **kwargs), atol=1e-4)
    swapped = dict(kwargs, labels=np.array([2, 9, 5]))
    assert np.abs(out[:2] - generate(guided, (1, 8, 8), 3, **swapped)[:2]).max() > 1e-4


def test_generate_shape_and_recorded_frames(mode, tiny_model, tiny_sched):
    rec = Recorder(("x", "x0"))
    final = generate(Denoiser(tiny_model, tiny_sched), (1, 28, 28), 2, seed=0, callback=rec, progress=False)
    assert final.shape == (2, 1, 28, 28) and np.isfinite(final).all()
    frames = rec.stack("x")
    assert frames.shape == (10, 2, 1, 28, 28) and rec.t == list(range(9, -1, -1))
    np.testing.assert_array_equal(frames[-1], final)
    assert np.abs(rec.stack("x0")).max() <= 1.0                   # clipped x_0 predictions


def test_same_seed_same_images_compiled_or_not(tiny_model, tiny_sched):
    a = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=3, progress=False)
    b = generate(Denoiser(tiny_model, tiny_sched, jit=False), (1, 28, 28), 2, seed=3, batch_size=2, progress=False)
    c = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=4, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - c).max() > 1e-2
