"""The numpy samplers against their closed forms: DDPM, DDIM, DPM-Solver++(2M) and its SDE form, the no-noise
ablation, timestep spacing, batching and seeds. No MindSpore: the "network" is numpy, and so is the schedule."""
import numpy as np
import pytest

from ddpm_ms.betas import make_betas
from ddpm_ms.samplers import (SAMPLERS, Recorder, batch_plan, generate, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                              timesteps)

SHAPE = (3, 1, 8, 8)


class _Sched:
    """The numpy coefficients the tests read (NoiseSchedule.np's, from the same betas)."""

    def __init__(self, name, T):  # pylint: disable=invalid-name
        b = make_betas(name, T)
        ab = np.cumprod(1 - b)
        ab_prev = np.append(1.0, ab[:-1])
        self.np = {"betas": b, "alphas_cumprod": ab, "sqrt_alphas_cumprod": np.sqrt(ab),
                   "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - ab),
                   "posterior_variance": b * (1 - ab_prev) / (1 - ab)}


def _schedule(name, T):  # pylint: disable=invalid-name
    return _Sched(name, T)


class _Denoiser:
    """The Denoiser's maths for an eps network, in numpy: x0 by eq. 4; with ``clip`` x0 clipped to [-1, 1] and
    eps re-derived from it. ``eps_fn(x, t)`` may also be given the labels (then ``labels`` must be set)."""

    def __init__(self, eps_fn, sched, clip=False, conditional=False):
        self.eps_fn, self.ab, self.clip, self.conditional = eps_fn, sched.np["alphas_cumprod"], clip, conditional
        self.alphas_cumprod = self.ab

    def __call__(self, x, t, labels=None, guidance=1.0):
        if labels is not None and not self.conditional:
            raise ValueError("labels need a class-conditional Denoiser (null_class)")
        a = self.ab[int(np.asarray(t).reshape(-1)[0])]
        eps = self.eps_fn(x, t)
        x0 = (x - np.sqrt(1 - a) * eps) / np.sqrt(a)
        if self.clip:
            x0 = np.clip(x0, -1, 1)
            eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        return x0.astype(np.float32), eps.astype(np.float32)


def _x_T(seed=0):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def _const_eps(x, t):
    return x * 0.3 + 0.1          # a fixed, input-dependent "network"


def _run(fn, sched, ts, seed=0, clip=False, x=None, **options):
    """A sampler over ``ts`` with the _const_eps network; returns (x_0, every step's output [S, ...])."""
    rec = Recorder(("x",))
    out = fn(_Denoiser(_const_eps, sched, clip), _x_T(5) if x is None else x, ts,
             sched.np["alphas_cumprod"], np.random.default_rng(seed), callback=rec, **options)
    return out, rec.stack("x")


def _oracle(sched, x0):
    """A denoiser whose "network" returns the exact noise at x_t for this x0 (eq. 4 solved for eps)."""
    sab, s1mab = sched.np["sqrt_alphas_cumprod"], sched.np["sqrt_one_minus_alphas_cumprod"]

    def eps(x, t):
        i = int(np.asarray(t).reshape(-1)[0])
        return (x - sab[i] * x0) / s1mab[i]

    return _Denoiser(eps, sched)


def test_timesteps_uniform_and_logsnr():
    ab = _schedule("linear", 200).np["alphas_cumprod"]
    assert list(timesteps(ab, 5)) == [199, 149, 100, 50, 0]
    assert list(timesteps(ab, 200, "logsnr")) == list(range(199, -1, -1)) == list(timesteps(ab, 200))
    for steps in (2, 10, 20, 57):
        ts = timesteps(ab, steps, "logsnr")
        assert len(ts) == steps and ts[0] == 199 and ts[-1] == 0 and (np.diff(ts) < 0).all()
    lam = 0.5 * np.log(ab / (1 - ab))
    uniform, logsnr = timesteps(ab, 10), timesteps(ab, 10, "logsnr")
    assert np.diff(lam[logsnr]).std() < 0.2 * np.diff(lam[uniform]).std()   # evenly spaced in lambda instead
    assert logsnr[-2] < uniform[-2]                                           # more steps near t = 0
    with pytest.raises(ValueError, match="steps must be in"):
        timesteps(ab, 201)
    with pytest.raises(ValueError, match="unknown spacing"):
        timesteps(ab, 5, "quadratic")


def test_ddim_eta0_is_deterministic():
    s = _schedule("linear", 50)
    ts = timesteps(s.np["alphas_cumprod"], 10)
    a, _ = _run(sample_ddim, s, ts, seed=1, eta=0.0)
    b, _ = _run(sample_ddim, s, ts, seed=2, eta=0.0)
    c, _ = _run(sample_ddim, s, ts, seed=2, eta=1.0)
    np.testing.assert_array_equal(a, b)          # the step noise is not used at eta=0
    assert np.abs(a - c).max() > 1e-3


def test_ddim_full_steps_eta1_is_ddpm():
    s = _schedule("linear", 20)
    ts = timesteps(s.np["alphas_cumprod"], 20)
    _, ddim = _run(sample_ddim, s, ts, seed=5, eta=1.0)
    _, ddpm = _run(sample_ddpm, s, ts, seed=5)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_one_step_closed_form(clip):
    s = _schedule("cosine", 100)
    x = _x_T(3)
    ts = timesteps(s.np["alphas_cumprod"], 4)
    out = _run(sample_ddim, s, ts, x=x, clip=clip, eta=0.0)[1][0]
    ab, ab_prev = s.np["alphas_cumprod"][ts[0]], s.np["alphas_cumprod"][ts[1]]
    eps = x * 0.3 + 0.1
    x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    if clip:   # x_0 clipped to [-1, 1], eps re-derived from it (eq. 4)
        assert np.abs(x0).max() > 1.5          # the clip is exercised
        x0 = np.clip(x0, -1, 1)
        eps = (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
    np.testing.assert_allclose(out, np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps, rtol=1e-4, atol=1e-5)


def test_ddpm_step_is_eq11_and_the_posterior_mean_of_clipped_x0():
    """One DDPM step: eq. 11's mean plus sigma_t z unclipped; eq. 7 of the clipped x_0 clipped; no noise at t=0."""
    s = _schedule("linear", 10)
    x, ts = _x_T(4), np.arange(9, -1, -1)
    z = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)   # the sampler's first draw
    plain = _run(sample_ddpm, s, ts, x=x)[1][0]
    clipped = _run(sample_ddpm, s, ts, x=x, clip=True)[1][0]
    b, ab, ab_prev = s.np["betas"][9], s.np["alphas_cumprod"][9], s.np["alphas_cumprod"][8]
    eps = x * 0.3 + 0.1
    sigma = np.sqrt(s.np["posterior_variance"][9])
    np.testing.assert_allclose(plain, (x - b / np.sqrt(1 - ab) * eps) / np.sqrt(1 - b) + sigma * z,  # eq. 11
                               rtol=1e-4, atol=1e-4)
    x0 = (x - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
    assert np.abs(x0).max() > 1.5
    mean = (np.sqrt(ab_prev) * b * np.clip(x0, -1, 1) + np.sqrt(1 - b) * (1 - ab_prev) * x) / (1 - ab)   # eq. 7
    np.testing.assert_allclose(clipped, mean + sigma * z, rtol=1e-4, atol=1e-4)
    last_in = _run(sample_ddpm, s, ts, x=x)[1][-2]
    eps = last_in * 0.3 + 0.1
    b0 = s.np["betas"][0]
    np.testing.assert_allclose(_run(sample_ddpm, s, ts, x=x)[0],
                               (last_in - b0 / np.sqrt(b0) * eps) / np.sqrt(1 - b0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,steps", [("ddim", 20), ("dpm++2m", 10), ("dpm++2m", 20), ("dpm++2m-sde", 10),
                                        ("dpm++3m-sde", 10), ("unipc", 10), ("unipc", 5)])
@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_oracle_recovers_x0(name, steps, spacing):
    s = _schedule("linear", 200)
    x0 = np.random.default_rng(7).uniform(-1, 1, SHAPE).astype(np.float32)
    out = generate(_oracle(s, x0), SHAPE[1:], 3, batch_size=3, sampler=name, steps=steps, spacing=spacing,
                   progress=False)
    np.testing.assert_allclose(out, x0, atol=1e-3)


def test_dpmpp_2m_second_step_closed_form():
    """Step 2 of DPM-Solver++(2M) with the _const_eps network against Lu et al. 2022, Alg. 2, by hand."""
    s = _schedule("linear", 100)
    ab = s.np["alphas_cumprod"]
    ts = timesteps(ab, 5, "logsnr")
    x = _x_T(2).astype(np.float64)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha / sigma)
    x0s, xs = [], [x]
    for i in range(2):
        t, u = ts[i], ts[i + 1]
        x0s.append((xs[-1] - sigma[t] * (xs[-1] * 0.3 + 0.1)) / alpha[t])
        h = lam[u] - lam[t]
        if i == 0:
            d = x0s[0]
        else:
            r = (lam[t] - lam[ts[i - 1]]) / h
            d = (1 + 1 / (2 * r)) * x0s[1] - 1 / (2 * r) * x0s[0]
        xs.append(sigma[u] / sigma[t] * xs[-1] - alpha[u] * (np.exp(-h) - 1) * d)
    frames = _run(sample_dpmpp_2m, s, ts, x=_x_T(2))[1]
    np.testing.assert_allclose(frames[0], xs[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(frames[1], xs[2], rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_sde_first_step_closed_form():
    """x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0 + sigma_s sqrt(1 - e^{-2h}) z."""
    s = _schedule("cosine", 100)
    ab = s.np["alphas_cumprod"]
    ts = timesteps(ab, 6)
    x = _x_T(4).astype(np.float64)
    t, u = ts[0], ts[1]
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    h = np.log(alpha[u] / sigma[u]) - np.log(alpha[t] / sigma[t])
    x0 = (x - sigma[t] * (x * 0.3 + 0.1)) / alpha[t]
    z = np.random.default_rng(9).standard_normal(SHAPE, dtype=np.float32)
    want = sigma[u] / sigma[t] * np.exp(-h) * x + alpha[u] * (1 - np.exp(-2 * h)) * x0 \
        + sigma[u] * np.sqrt(1 - np.exp(-2 * h)) * z
    frames = _run(SAMPLERS["dpm++2m-sde"].fn, s, ts, seed=9, x=_x_T(4))[1]
    np.testing.assert_allclose(frames[0], want, rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_at_every_step_is_ddim_eta0():
    """With steps = T the second-order correction is O(h^2): the result is within 0.02 of DDIM's (first order)."""
    s = _schedule("linear", 200)
    ts = timesteps(s.np["alphas_cumprod"], 200)
    dpm = _run(sample_dpmpp_2m, s, ts, clip=True)[0]
    ddim = _run(sample_ddim, s, ts, clip=True, eta=0.0)[0]
    assert np.abs(dpm - ddim).max() < 0.02
    coarse = _run(sample_dpmpp_2m, s, timesteps(s.np["alphas_cumprod"], 10), clip=True)[0]
    assert np.abs(coarse - _run(sample_ddim, s, timesteps(s.np["alphas_cumprod"], 10), clip=True, eta=0.0)[0]).max() \
        > 5 * np.abs(dpm - ddim).max()                       # and differs where the steps are large


def test_no_noise_ablation_uses_ddpm_means_only():
    s = _schedule("linear", 10)
    ts = np.arange(9, -1, -1)
    ablation = SAMPLERS["ddpm-no-noise"].fn
    a, _ = _run(ablation, s, ts, seed=1)
    b, _ = _run(ablation, s, ts, seed=2)
    c, _ = _run(sample_ddpm, s, ts, seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2
    x = _x_T(5).astype(np.float64)   # closed form: iterate the DDPM mean (eq. 11)
    for t in ts:
        b_t, ab_t = s.np["betas"][t], s.np["alphas_cumprod"][t]
        x = (x - b_t / np.sqrt(1 - ab_t) * (x * 0.3 + 0.1)) / np.sqrt(1 - b_t)
    np.testing.assert_allclose(a, x, rtol=1e-4, atol=1e-4)


def test_ddim_skipped_steps_with_partial_eta_closed_form():
    """4 of 100 steps with eta 0.5, every frame against Song et al. 2021 eq. 12 with sigma from eq. 16."""
    s = _schedule("cosine", 100)
    ts = timesteps(s.np["alphas_cumprod"], 4)
    _, frames = _run(sample_ddim, s, ts, seed=11, x=_x_T(5), eta=0.5)
    rng, x = np.random.default_rng(11), _x_T(5).astype(np.float64)    # the sampler draws one z per step
    ab = s.np["alphas_cumprod"]
    assert list(ts) == [99, 66, 33, 0]
    for k, t in enumerate(ts):
        a_t, a_prev = ab[t], (ab[ts[k + 1]] if k + 1 < 4 else 1.0)
        sigma = 0.5 * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        assert (sigma > 0) == (k + 1 < 4)                               # no noise into x_0
        eps = x * 0.3 + 0.1
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        z = rng.standard_normal(SHAPE, dtype=np.float32)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * z
        np.testing.assert_allclose(frames[k], x, rtol=1e-4, atol=1e-4, err_msg=f"step {k}")


def test_every_registered_sampler_runs_with_its_defaults():
    s = _schedule("linear", 60)
    d = _Denoiser(_const_eps, s)
    for name, entry in SAMPLERS.items():
        rec = Recorder(("x", "x0"))
        out = generate(d, (1, 8, 8), 2, batch_size=2, sampler=name, callback=rec, progress=False)
        assert np.isfinite(out).all() and out.shape == (2, 1, 8, 8), name
        assert len(rec.t) == (entry.default_steps or 60) and rec.t[0] == 59 and rec.t[-1] == 0, name
        np.testing.assert_array_equal(rec.stack("x")[-1], out, err_msg=name)
    with pytest.raises(ValueError, match="takes no option 'eta'"):
        generate(d, (1, 8, 8), 2, sampler="dpm++2m", eta=0.5, progress=False)
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(d, (1, 8, 8), 2, sampler="plms", progress=False)


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

    s = _schedule("linear", 10)
    d = _Denoiser(eps, s)
    out = generate(d, (1, 8, 8), 5, seed=3, batch_size=2, sampler="ddim", steps=2, eta=1.0, progress=False)
    assert out.shape == (5, 1, 8, 8)
    assert set(shapes) == {(2, 1, 8, 8)}                  # the remainder batch is padded, not a new shape
    ts = timesteps(s.np["alphas_cumprod"], 2)
    batches = []
    for i in range(3):                                    # batch i: x_T and then its noise from (3, i)
        rng = np.random.default_rng((3, i))
        x_T = rng.standard_normal((2, 1, 8, 8), dtype=np.float32)
        batches.append(sample_ddim(d, x_T, ts, s.np["alphas_cumprod"], rng, eta=1.0))
    np.testing.assert_allclose(out, np.concatenate(batches)[:5], atol=1e-6)
    other = generate(d, (1, 8, 8), 6, seed=4, batch_size=2, sampler="ddim", steps=2, eta=1.0, progress=False)
    pairs = [(a, b) for a in range(5) for b in range(6)]   # no image of seed 3 is an image of seed 4
    assert min(np.abs(out[a] - other[b]).max() for a, b in pairs) > 0.1
    with pytest.raises(ValueError, match="label for each"):      # padding must not hide missing labels
        generate(_Denoiser(eps, s, conditional=True), (1, 8, 8), 5, batch_size=2, labels=np.arange(3),
                 progress=False)


def test_dpmpp_3m_sde_third_step_by_hand():
    """Three steps of DPM-Solver++(3M) SDE with the _const_eps network, written as k-diffusion's sample_dpmpp_3m_sde
    (the variance-exploding variable x / alpha, sigma_VE = sigma / alpha, t = -log sigma_VE) and compared frame by
    frame: the first step is first order, the second second order, the third third order."""
    s = _schedule("cosine", 100)
    ab = s.np["alphas_cumprod"]
    ts = timesteps(ab, 6)
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    frames = _run(SAMPLERS["dpm++3m-sde"].fn, s, ts, seed=4, x=_x_T(1))[1]
    rng, x = np.random.default_rng(4), _x_T(1).astype(np.float64)
    xv = x / alpha[ts[0]]
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(3):
        t, u = ts[i], ts[i + 1]
        x_vp = xv * alpha[t]
        eps = x_vp * 0.3 + 0.1
        denoised = (x_vp - sigma[t] * eps) / alpha[t]
        h = -np.log(sigma[u] / alpha[u]) + np.log(sigma[t] / alpha[t])
        h_eta = 2 * h
        xv = np.exp(-h_eta) * xv + -np.expm1(-h_eta) * denoised
        if h_2 is not None:
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_2 = np.expm1(-h_eta) / h_eta + 1
            xv = xv + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif h_1 is not None:
            xv = xv + (np.expm1(-h_eta) / h_eta + 1) * (denoised - d_1) / (h_1 / h)
        z = rng.standard_normal(SHAPE, dtype=np.float32)
        xv = xv + z * (sigma[u] / alpha[u]) * np.sqrt(-np.expm1(-2 * h))
        d_1, d_2, h_1, h_2 = denoised, d_1, h, h_1
        np.testing.assert_allclose(frames[i], xv * alpha[u], rtol=1e-4, atol=1e-4, err_msg=f"step {i}")


def _unipc_by_hand(s, ts, x, steps_checked):
    """UniPC-bh2 as diffusers' UniPCMultistepScheduler writes it (predict_x0, solver_order 2, the generic R / b
    system solved with numpy), with the _const_eps network: the list of predictor outputs, one per step."""
    ab = s.np["alphas_cumprod"]
    alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    lam = np.log(alpha / sigma)
    ms, tl, outs, last_sample, this_order = [], [], [], None, 1

    def coeffs(t, s0, order):
        h = lam[t] - lam[s0]
        hh = -h
        h_phi_1 = np.expm1(hh)
        h_phi_k, fact, R, b = h_phi_1 / hh - 1, 1, [], []
        rks = [(lam[tl[-(k + 1)]] - lam[s0]) / h for k in range(1, order)] + [1.0]
        for k in range(1, order + 1):
            R.append(np.power(rks, k - 1))
            b.append(h_phi_k * fact / h_phi_1)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        return h_phi_1, np.array(R), np.array(b), rks

    for i in range(steps_checked):
        t = ts[i]
        m = (x - sigma[t] * (x * 0.3 + 0.1)) / alpha[t]
        if i > 0:                                              # multistep_uni_c_bh_update
            s0, m0 = tl[-1], ms[-1]
            h_phi_1, R, b, rks = coeffs(t, s0, this_order)
            rhos_c = np.array([0.5]) if this_order == 1 else np.linalg.solve(R, b)
            d1s = [(ms[-(k + 1)] - m0) / rks[k - 1] for k in range(1, this_order)]
            corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
            x = sigma[t] / sigma[s0] * last_sample - alpha[t] * h_phi_1 * m0 \
                - alpha[t] * h_phi_1 * (corr + rhos_c[-1] * (m - m0))
        ms.append(m)
        tl.append(t)
        this_order = min(2, len(ms))
        last_sample = x
        u = ts[i + 1]                                          # multistep_uni_p_bh_update
        h_phi_1, R, b, rks = coeffs(u, t, this_order)
        x_new = sigma[u] / sigma[t] * x - alpha[u] * h_phi_1 * m
        if this_order == 2:
            x_new = x_new - alpha[u] * h_phi_1 * 0.5 * (ms[-2] - m) / rks[0]
        x = x_new
        outs.append(x)
    return outs


def test_unipc_three_steps_by_hand():
    """UniPC's first three steps (first-order predictor, then second-order predictor with first- and second-order
    correctors) against diffusers' generic formulation, frame by frame."""
    s = _schedule("cosine", 100)
    ts = timesteps(s.np["alphas_cumprod"], 6, "logsnr")
    frames = _run(SAMPLERS["unipc"].fn, s, ts, x=_x_T(3))[1]
    for i, want in enumerate(_unipc_by_hand(s, ts, _x_T(3).astype(np.float64), 4)):
        np.testing.assert_allclose(frames[i], want, rtol=1e-4, atol=1e-4, err_msg=f"step {i}")


def test_unipc_is_dpmpp_2m_plus_its_corrector():
    """The first step (no corrector yet) equals DPM-Solver++(2M)'s; after that the two differ by the corrector,
    which vanishes as the steps shrink (at steps = T it is below 1e-4) and matters at 10 steps."""
    s = _schedule("linear", 200)
    ab = s.np["alphas_cumprod"]
    gaps = []
    for steps in (200, 10):
        ts = timesteps(ab, steps)
        uni, dpm = _run(SAMPLERS["unipc"].fn, s, ts)[1], _run(sample_dpmpp_2m, s, ts)[1]
        np.testing.assert_allclose(uni[0], dpm[0], rtol=1e-6, atol=1e-6)
        gaps.append(np.abs(uni[-1] - dpm[-1]).max())
    assert 0 < gaps[0] < 1e-4 and gaps[1] > 2e-3, gaps
