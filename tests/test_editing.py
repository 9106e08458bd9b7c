"""Inpainting (plain and RePaint), SDEdit and interpolation against oracles and closed forms, in numpy."""
import numpy as np
import pytest

from ddpm_ms.betas import make_betas
from ddpm_ms.editing import (inpaint, interpolate, make_mask, repaint, repaint_schedule, sdedit, slerp)
from ddpm_ms.samplers import SAMPLERS, generate, timesteps

SHAPE = (2, 1, 8, 8)


def _ab(name="cosine", T=100):  # pylint: disable=invalid-name
    return np.cumprod(1 - make_betas(name, T))


def _oracle(ab, x0):
    """A denoiser whose network knows the answer: x0 itself, and the eps that x_t then implies (eq. 4)."""
    def denoise(x_t, t):
        a = ab[int(t)]
        return x0.astype(np.float32), ((x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)).astype(np.float32)
    return denoise


def _image(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, SHAPE).astype(np.float32)


def _const(ab):
    """A fixed "network": eps = 0.3 x + 0.1, x0 from eq. 4, clipped."""
    def denoise(x_t, t):
        a = ab[int(t)]
        eps = 0.3 * x_t + 0.1
        x0 = np.clip((x_t - np.sqrt(1 - a) * eps) / np.sqrt(a), -1, 1)
        return x0.astype(np.float32), ((x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)).astype(np.float32)
    return denoise


@pytest.mark.parametrize("name", ["left", "right", "top", "bottom", "center", "random"])
def test_masks(name):
    m = make_mask(name, SHAPE, seed=3)
    assert m.shape == (1, 1, 8, 8) and set(np.unique(m)) == {0.0, 1.0}
    assert m.mean() == (0.75 if name == "center" else 0.5) or name == "random"
    if name == "left":
        assert m[0, 0, :, :4].all() and not m[0, 0, :, 4:].any()
    with pytest.raises(ValueError, match="unknown mask 'diagonal'"):
        make_mask("diagonal", SHAPE)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 20), ("dpm++2m", 10), ("dpm++2m-sde", 20)])
def test_inpainting_with_an_oracle_keeps_the_known_and_recovers_the_unknown(sampler, steps):
    ab = _ab()
    full = _image(1)
    mask = make_mask("left", SHAPE)
    ts = timesteps(ab, steps)
    out = inpaint(_oracle(ab, full), full * mask, mask, ts, ab, np.random.default_rng(0), sampler=sampler)
    known = np.broadcast_to(mask, SHAPE).astype(bool)
    np.testing.assert_allclose(out[known], full[known], atol=1e-6)          # the known half, to float tolerance
    np.testing.assert_allclose(out[~known], full[~known], atol=2e-3)        # the network's answer fills the rest


def test_repaint_with_an_oracle_keeps_the_known_and_recovers_the_unknown():
    ab = _ab()
    full = _image(2)
    mask = make_mask("center", SHAPE)
    out = repaint(_oracle(ab, full), full, mask, timesteps(ab, 50), ab, np.random.default_rng(1), jump_length=5,
                  jump_n_sample=3)
    known = np.broadcast_to(mask, SHAPE).astype(bool)
    np.testing.assert_allclose(out[known], full[known], atol=1e-6)
    np.testing.assert_allclose(out[~known], full[~known], atol=2e-3)


def test_repaint_schedule_is_the_papers():
    """n=10, jumps of 2 resampled twice: the get_schedule_jump of Lugmayr et al.'s code, by hand."""
    path = repaint_schedule(10, jump_length=2, jump_n_sample=2)
    assert path[0] == 0 and path[-1] == 10
    steps = np.diff(path)
    assert set(steps) == {1, -1}
    assert (steps == 1).sum() - (steps == -1).sum() == 10
    assert (steps == -1).sum() == 2 * 4          # 4 jump points (levels 0, 2, 4, 6), one extra pass of 2 each
    assert path == [0, 1, 2, 3, 2, 1, 2, 3, 4, 5, 4, 3, 4, 5, 6, 7, 6, 5, 6, 7, 8, 9, 8, 7, 8, 9, 10]
    assert repaint_schedule(6, 1, 1) == list(range(7))      # no resampling: plain DDPM order


def test_repaint_without_jumps_is_plain_ddpm_inpainting_with_the_known_part_noised():
    """jump_n_sample=1: every step is DDPM's posterior step; check the first one by hand (eq. 7, eq. 4)."""
    ab = _ab("linear", 20)
    full, mask = _image(3), make_mask("top", SHAPE)
    ts = timesteps(ab, 20)
    rng = np.random.default_rng(5)
    seen = []
    repaint(_const(ab), full, mask, ts, ab, rng, jump_length=1, jump_n_sample=1, callback=seen.append)
    assert len(seen) == 20
    hand = np.random.default_rng(5)
    x = hand.standard_normal(SHAPE, dtype=np.float32)
    x0, _ = _const(ab)(x, ts[0])
    a_t, a_s = ab[ts[0]], ab[ts[1]]
    beta = 1 - a_t / a_s
    mean = (np.sqrt(a_s) * beta * x0 + np.sqrt(1 - beta) * (1 - a_s) * x) / (1 - a_t)
    unknown = mean + np.sqrt(beta * (1 - a_s) / (1 - a_t)) * hand.standard_normal(SHAPE, dtype=np.float32)
    known = np.sqrt(a_s) * full + np.sqrt(1 - a_s) * hand.standard_normal(SHAPE, dtype=np.float32)
    np.testing.assert_allclose(seen[0]["x"], mask * known + (1 - mask) * unknown, rtol=1e-5, atol=1e-5)


def test_sdedit_ends():
    ab = _ab("linear", 50)
    image = _image(4)
    np.testing.assert_array_equal(sdedit(_const(ab), image, 0.0, ab, np.random.default_rng(0)), image)

    class _Batch:   # generate's view of a denoiser
        alphas_cumprod = ab

        def __call__(self, x_t, t, labels=None, guidance=1.0):
            return _const(ab)(x_t, t)

    for sampler in ("ddim", "ddpm", "dpm++2m-sde"):
        plain = generate(_Batch(), SHAPE[1:], 2, seed=7, batch_size=2, sampler=sampler, steps=10, progress=False)
        edited = sdedit(_const(ab), image, 1.0, ab, np.random.default_rng(7), sampler=sampler, steps=10)
        np.testing.assert_array_equal(edited, plain)                 # strength 1: unconditional from that noise
    half = sdedit(_const(ab), image, 0.5, ab, np.random.default_rng(7), sampler="ddim", steps=10)
    assert np.abs(half - plain).max() > 1e-2 and np.abs(half - image).max() > 1e-2
    with pytest.raises(ValueError, match="strength must be in"):
        sdedit(_const(ab), image, 1.5, ab, np.random.default_rng(0))


def test_sdedit_starts_from_the_noised_image():
    """Strength 0.4 of T=50: the chain starts at t=19 from sqrt(ab) x0 + sqrt(1 - ab) z and visits 4 steps."""
    ab = _ab("linear", 50)
    image = _image(5)
    seen = []

    def record(info):
        seen.append(info)

    sdedit(_const(ab), image, 0.4, ab, np.random.default_rng(2), sampler="ddim", steps=10, callback=record)
    z = np.random.default_rng(2).standard_normal(SHAPE, dtype=np.float32)
    assert [s["t"] for s in seen] == list(timesteps(ab[:20], 4))
    np.testing.assert_allclose(seen[0]["x_t"], np.sqrt(ab[19]) * image + np.sqrt(1 - ab[19]) * z, rtol=1e-6)


def test_interpolation_ends_are_the_samples_of_each_noise():
    ab = _ab("cosine", 60)
    z0, z1 = (np.random.default_rng(s).standard_normal((1, 1, 8, 8)).astype(np.float32) for s in (0, 1))
    strip = interpolate(_const(ab), z0, z1, 5, ab, sampler="ddim", steps=12)
    ts = timesteps(ab, 12)
    for z, end in ((z0, strip[0]), (z1, strip[-1])):
        alone = SAMPLERS["ddim"].fn(_const(ab), z, ts, ab, np.random.default_rng(9), eta=0.0)
        np.testing.assert_allclose(end, alone[0], atol=1e-6)
    assert np.abs(strip[2] - strip[0]).max() > 1e-2
    np.testing.assert_allclose(slerp(z0, z1, 0.0), z0, atol=1e-6)
    mid = slerp(z0, z1, 0.5)
    assert abs(np.linalg.norm(mid) - np.linalg.norm(z0)) < 0.25 * np.linalg.norm(z0)   # stays on the shell
    with pytest.raises(ValueError, match="k >= 2"):
        interpolate(_const(ab), z0, z1, 1, ab)
    with pytest.raises(ValueError, match="deterministic sampler"):
        interpolate(_const(ab), z0, z1, 3, ab, sampler="ddpm")
