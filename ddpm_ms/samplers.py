"""Reverse-process samplers in plain numpy: functions with one signature (k-diffusion style).

    x_0 = sampler(denoise, x, timesteps, alphas_cumprod, rng, callback=None, **options)

- ``denoise(x_t, t) -> (x0, eps)``: the network's prediction of x_0 and of the noise at timestep ``t`` (an int)
  for x_t [B,C,H,W] float32 ndarray; a :class:`ddpm_ms.sampling.Denoiser` with its labels bound, or any function.
- ``x``: x_T, the starting noise [B,C,H,W] float32 ndarray.
- ``timesteps``: the timesteps visited, descending and ending at 0, one network call each (:func:`timesteps`).
- ``alphas_cumprod``: alpha_bar_t [T] float64, the schedule's.
- ``rng``: a numpy Generator; samplers that add noise draw one z [B,C,H,W] per step.
- ``callback(info)``: called after each step with the :func:`step_record` {i, t, x_t, x0, eps, x}; it may return
  an array to continue from instead of ``x`` (inpainting puts the known pixels back this way), else None.
- ``options``: the sampler's own keyword arguments (e.g. ``eta`` for DDIM), which the registry reads off the
  signature.

A sampler is this function plus one line in :data:`SAMPLERS`, which the config, every command and
``compare-samplers`` read. Nothing here imports MindSpore.
"""
import inspect
from typing import NamedTuple, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from .registry import Registry

SPACINGS = ("uniform", "logsnr")


def timesteps(alphas_cumprod, steps, spacing="uniform"):
    """The ``steps`` timesteps a sampler visits: int64 [steps], descending from T-1 to 0.

    "uniform": evenly spaced in t (DDIM's choice). "logsnr": evenly spaced in the half log-SNR
    lambda_t = log(alpha_t / sigma_t) = log(alpha_bar_t / (1 - alpha_bar_t)) / 2 (DPM-Solver's choice), which puts
    more steps where the signal appears, at small t. Rounded to integers, kept strictly descending.
    """
    ab = np.asarray(alphas_cumprod, np.float64)
    T = len(ab)  # pylint: disable=invalid-name
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    if spacing == "uniform" or steps == 1:
        ts = np.linspace(T - 1, 0, steps)
    else:
        lam = 0.5 * np.log(ab / (1 - ab))          # decreasing in t
        ts = np.interp(np.linspace(lam[-1], lam[0], steps), lam[::-1], np.arange(T)[::-1])
    ts = np.round(ts).astype(np.int64)
    for i in range(steps - 2, -1, -1):              # strictly descending: t_i >= t_{i+1} + 1 ...
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return np.minimum(ts, T - 1 - np.arange(steps))  # ... and t_i <= T-1-i


def _alpha_bar_next(alphas_cumprod, ts, i):
    """(alpha_bar at ts[i], at the next timestep); 1 after the last one (clean data)."""
    return alphas_cumprod[ts[i]], (alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else 1.0)


def _noise(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def step_record(i, t, x_t, x0, eps, x):
    """What a callback sees after step ``i`` at timestep ``t``: the input x_t, the predictions x0 and eps, and
    the step's output x, each [B,C,H,W]."""
    return {"i": i, "t": int(t), "x_t": x_t, "x0": x0, "eps": eps, "x": x}


def _report(callback, *fields):
    """Call ``callback`` with the step's record; returns the x to continue from (the callback's, or the step's)."""
    if callback is None:
        return fields[-1]
    out = callback(step_record(*fields))
    return fields[-1] if out is None else np.asarray(out, np.float32)


# ------------------------------------------------------------------------------------------------ samplers

def _ancestral(denoise, x, ts, alphas_cumprod, rng, callback, eta):
    """x_prev ~ q(x_prev | x_t, x0_pred), the posterior of eq. 6-7, its std scaled by eta."""
    for i, t in enumerate(ts):
        a_t, a_prev = _alpha_bar_next(alphas_cumprod, ts, i)
        x0, eps = denoise(x, t)
        beta = 1.0 - a_t / a_prev
        mean = (np.sqrt(a_prev) * beta * x0 + np.sqrt(1.0 - beta) * (1.0 - a_prev) * x) / (1.0 - a_t)   # eq. 7
        std = eta * np.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t))                     # beta~_t (eq. 7); 0 at t=0
        x_next = (mean + std * _noise(rng, x.shape)).astype(np.float32)
        x = _report(callback, i, t, x, x0, eps, x_next)
    return x


def sample_ddpm(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """Ancestral sampling: x_prev ~ q(x_prev | x_t, x0_pred), the posterior of eq. 6-7.

    Over every timestep this is Ho et al. 2020, Alg. 2 with sigma_t^2 = beta~_t; over fewer it is the respaced
    chain of Nichol & Dhariwal 2021 (beta_t = 1 - alpha_bar_t / alpha_bar_prev).
    """
    return _ancestral(denoise, x, ts, alphas_cumprod, rng, callback, eta=1.0)


def sample_ddpm_no_noise(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """The "no noise added back" ablation: DDPM's posterior means alone (:func:`sample_ddpm` with std 0)."""
    return _ancestral(denoise, x, ts, alphas_cumprod, rng, callback, eta=0.0)


def sample_ddim(denoise, x, ts, alphas_cumprod, rng, callback=None, eta=0.0):
    """DDIM (Song et al. 2021, eq. 12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (eq. 16).

    Deterministic at eta=0; at eta=1 over every timestep it is DDPM's ancestral step.
    """
    for i, t in enumerate(ts):
        a_t, a_prev = _alpha_bar_next(alphas_cumprod, ts, i)
        x0, eps = denoise(x, t)
        sigma = eta * np.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x_next = (np.sqrt(a_prev) * x0 + np.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0)) * eps
                  + sigma * _noise(rng, x.shape)).astype(np.float32)
        x = _report(callback, i, t, x, x0, eps, x_next)
    return x


def _dpmpp_2m(denoise, x, ts, alphas_cumprod, rng, callback, eta):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): data prediction, multistep, second order; eta > 0 its SDE form.

    With alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), lambda = log(alpha / sigma), h = lambda_s - lambda_t
    and r = h_prev / h, one step from t to s is, at eta = 0 (the probability-flow ODE),
      x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,   D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev;
    at eta = 1 (DPM-Solver++(2M) SDE, the reverse SDE in the same variables):
      x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) D' + sigma_s sqrt(1 - e^{-2h}) z,
    with D' the same extrapolation (midpoint form); eta in between scales h in the decay and the noise.
    The first step is first order (D = x0_t); the last, into clean data (sigma = 0), returns x0.
    """
    ab = np.asarray(alphas_cumprod, np.float64)
    alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
    lam = np.log(alpha) - np.log(sigma)
    x0_prev, h_prev = None, None
    for i, t in enumerate(ts):
        x0, eps = denoise(x, t)
        if i + 1 == len(ts):
            x_next, h = x0, None
        else:
            s = ts[i + 1]
            h = lam[s] - lam[t]
            gain = -np.expm1(-(1.0 + eta) * h)           # 1 - e^{-(1 + eta) h}
            d = x0 if x0_prev is None else x0 + 0.5 / (h_prev / h) * (x0 - x0_prev)
            x_next = sigma[s] / sigma[t] * np.exp(-eta * h) * x + alpha[s] * gain * d
            if eta > 0:
                x_next = x_next + sigma[s] * np.sqrt(-np.expm1(-2.0 * eta * h)) * _noise(rng, x.shape)
            x_next = x_next.astype(np.float32)
        x, x0_prev, h_prev = _report(callback, i, t, x, x0, eps, x_next), x0, h
    return x


def sample_dpmpp_2m(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """DPM-Solver++(2M), the deterministic probability-flow form (see :func:`_dpmpp_2m`)."""
    return _dpmpp_2m(denoise, x, ts, alphas_cumprod, rng, callback, eta=0.0)


def sample_dpmpp_2m_sde(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """DPM-Solver++(2M) SDE: the same steps with noise added back (see :func:`_dpmpp_2m`, eta = 1)."""
    return _dpmpp_2m(denoise, x, ts, alphas_cumprod, rng, callback, eta=1.0)


def _dpmpp_3m(denoise, x, ts, alphas_cumprod, rng, callback, eta):
    """DPM-Solver++(3M) (Lu et al. 2022's multistep data-prediction solver to third order, as k-diffusion's
    sample_dpmpp_3m_sde writes it): with h = lambda_s - lambda_t and h_eta = (1 + eta) h, one step from t to s is
      x_s = (alpha_s / alpha_t) e^{-h_eta} x_t + alpha_s [(1 - e^{-h_eta}) x0 + phi_2 D1 - phi_3 D2]
            + sigma_s sqrt(1 - e^{-2 eta h}) z,
    D1, D2 the first and second divided differences of the last three x0 predictions (r0 = h_1/h, r1 = h_2/h):
      d1_0 = (x0 - x0_1) / r0,  d1_1 = (x0_1 - x0_2) / r1,  D1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),
      D2 = (d1_0 - d1_1) / (r0 + r1),  phi_2 = (e^{-h_eta} - 1) / h_eta + 1,  phi_3 = phi_2 / h_eta - 1/2.
    The first step is first order, the second second order (phi_2 D1 with D1 = d1_0); the last returns x0.
    """
    ab = np.asarray(alphas_cumprod, np.float64)
    alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
    lam = np.log(alpha) - np.log(sigma)
    hist, hs = [], []          # the last x0 predictions and step sizes, newest first
    for i, t in enumerate(ts):
        x0, eps = denoise(x, t)
        if i + 1 == len(ts):
            x_next = x0
        else:
            s = ts[i + 1]
            h = lam[s] - lam[t]
            h_eta = (1.0 + eta) * h
            ve = np.exp(-h_eta) * x / alpha[t] - np.expm1(-h_eta) * x0     # in x / alpha (the VE variable)
            phi_2 = np.expm1(-h_eta) / h_eta + 1.0
            if len(hist) >= 2:
                r0, r1 = hs[0] / h, hs[1] / h
                d1_0, d1_1 = (x0 - hist[0]) / r0, (hist[0] - hist[1]) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                ve = ve + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif hist:
                ve = ve + phi_2 * (x0 - hist[0]) / (hs[0] / h)
            x_next = alpha[s] * ve
            if eta > 0:
                x_next = x_next + sigma[s] * np.sqrt(-np.expm1(-2.0 * eta * h)) * _noise(rng, x.shape)
            x_next = x_next.astype(np.float32)
            hs = [h] + hs[:1]
        hist = [x0] + hist[:1]
        x = _report(callback, i, t, x, x0, eps, x_next)
    return x


def sample_dpmpp_3m_sde(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """DPM-Solver++(3M) SDE: third-order multistep data prediction with noise added back (see :func:`_dpmpp_3m`)."""
    return _dpmpp_3m(denoise, x, ts, alphas_cumprod, rng, callback, eta=1.0)


def sample_unipc(denoise, x, ts, alphas_cumprod, rng, callback=None):
    """UniPC-2 (Zhao et al. 2023, B(h) = e^h - 1, data prediction): a second-order multistep predictor (UniP, which
    with this B(h) is DPM-Solver++(2M)) and, after every network call, a corrector (UniC) that reuses that call.

    With lambda, h = lambda_s - lambda_t as in :func:`_dpmpp_2m`, x0_i the prediction at t_i and, for the step
    t_{i-1} -> t_i, r = (lambda_{t_{i-2}} - lambda_{t_{i-1}}) / h, D1 = (x0_{i-2} - x0_{i-1}) / r,
      UniP:  x_i = (sigma_i / sigma_{i-1}) x^c_{i-1} - alpha_i (e^{-h} - 1) x0_{i-1} - alpha_i B D1 / 2,  B = e^{-h} - 1
      UniC:  x^c_i = x_i - alpha_i B [(rho_1 - 1/2) D1 + rho_2 (x0_i - x0_{i-1})],
    rho = R^{-1} b with R = [[1, 1], [r, 1]], b_k = k! phi_{k+1}(-h) / B (eq. 8 and Thm. 3.1; phi_1 = (e^{-h} - 1),
    phi_{k+1} = phi_k / (-h) - 1/k!); at first order (no D1) UniC is x_i - alpha_i B (x0_i - x0_{i-1}) / 2.
    The first step is first order; the corrector is written as a change to x_i, so an x a callback returned is
    corrected too; the last step returns x0 (no corrector: it would need one more call).
    """
    ab = np.asarray(alphas_cumprod, np.float64)
    alpha, sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
    lam = np.log(alpha) - np.log(sigma)
    x0_prev, last = None, None      # last: (h, r, D1, alpha_i B) of the predictor step that made x
    for i, t in enumerate(ts):
        x0, eps = denoise(x, t)
        if last is not None:                                            # UniC, with the call just made
            h, r, d1, alpha_b = last
            if d1 is None:
                corr = 0.5 * (x0 - x0_prev)
            else:
                hh, b_h = -h, np.expm1(-h)
                phi_2 = b_h / hh - 1.0
                b1, b2 = phi_2 / b_h, 2.0 * (phi_2 / hh - 0.5) / b_h
                rho_1 = (b1 - b2) / (1.0 - r)
                corr = (rho_1 - 0.5) * d1 + (b1 - rho_1) * (x0 - x0_prev)
            x = (x - alpha_b * corr).astype(np.float32)
        if i + 1 == len(ts):
            x_next = x0
        else:                                                           # UniP to the next timestep
            s = ts[i + 1]
            h = lam[s] - lam[t]
            alpha_b = alpha[s] * np.expm1(-h)
            x_next = sigma[s] / sigma[t] * x - alpha_b * x0
            r = d1 = None
            if x0_prev is not None:
                r = (lam[ts[i - 1]] - lam[t]) / h
                d1 = (x0_prev - x0) / r
                x_next = x_next - alpha_b * 0.5 * d1
            x_next = x_next.astype(np.float32)
            last = (h, r, d1, alpha_b)
        x, x0_prev = _report(callback, i, t, x, x0, eps, x_next), x0
    return x


SAMPLERS = Registry("sampler")   # default_steps: network calls when none are given (None: every timestep)


def register_sampler(name, fn, summary, default_steps=None):
    """Add a sampler to :data:`SAMPLERS`; its options are its keyword arguments after ``callback``."""
    params = list(inspect.signature(fn).parameters)
    return SAMPLERS.add(name, fn, summary, default_steps=default_steps,
                        options=tuple(params[params.index("callback") + 1:]))


register_sampler("ddpm", sample_ddpm, "DDPM ancestral sampling (Ho et al. 2020, Alg. 2)")
register_sampler("ddpm-no-noise", sample_ddpm_no_noise, "the ablation: DDPM's means with no noise added back")
register_sampler("ddim", sample_ddim, "DDIM (Song et al. 2021); eta 0 deterministic, 1 DDPM-like", 50)
register_sampler("dpm++2m", sample_dpmpp_2m, "DPM-Solver++(2M) (Lu et al. 2022): deterministic, second order, "
                 "multistep", 20)
register_sampler("dpm++2m-sde", sample_dpmpp_2m_sde, "DPM-Solver++(2M) SDE: the same steps with noise added "
                 "back, like DDPM", 20)
register_sampler("dpm++3m-sde", sample_dpmpp_3m_sde, "DPM-Solver++(3M) SDE: third order, multistep, noise added "
                 "back", 20)
register_sampler("unipc", sample_unipc, "UniPC-2 (Zhao et al. 2023): DPM-Solver++(2M) steps with a corrector "
                 "that reuses each network call; deterministic", 10)


def default_steps(name, num_timesteps):
    """The network calls ``name`` makes when no steps are given (at most ``num_timesteps``)."""
    return min(SAMPLERS[name].default_steps or num_timesteps, num_timesteps)


# ------------------------------------------------------------------------------------------------ batches

class Recorder:
    """A sampler callback that keeps some fields of every step of one batch: ``stack("x")`` -> [S, B, C, H, W].

    ``t`` lists the timesteps. Pass it as ``callback`` to :func:`generate` (batch 0 by default) or to a sampler.
    """

    def __init__(self, keys=("x",), batch=0):
        self.keys, self.batch = keys, batch
        self.t, self.values = [], {k: [] for k in keys}

    def __call__(self, info):
        if info.get("batch", 0) != self.batch:
            return
        self.t.append(info["t"])
        for k in self.keys:
            self.values[k].append(info[k])

    def stack(self, key="x"):
        """One field over the steps: [S, B, C, H, W]."""
        return np.stack(self.values[key])


class Guidance(NamedTuple):
    """Classifier-free guidance ``w`` applied only on the timesteps ``interval`` = (lo, hi), both included, and the
    conditional model alone (w = 1) on the others (Kynkaanniemi et al. 2024, "Applying guidance in a limited
    interval": at high noise guidance costs diversity, at low noise it does little). ``interval`` None: every t."""
    w: float
    interval: Optional[Tuple[int, int]] = None

    def at(self, t):
        """w at timestep ``t`` (an int, or for a batch its largest)."""
        if self.interval is None:
            return float(self.w)
        return float(self.w) if self.interval[0] <= int(np.max(t)) <= self.interval[1] else 1.0


def interval_problem(interval, num_timesteps):
    """What is wrong with a guidance ``interval`` for a model of ``num_timesteps`` T, or None if it is fine."""
    if interval is None or (len(interval) == 2 and 0 <= interval[0] <= interval[1] < num_timesteps):
        return None
    return f"must be LO HI with 0 <= LO <= HI < T = {num_timesteps} timesteps, got {list(interval)}"


def guidance_at(guidance, t):
    """The w of a float or a :class:`Guidance` at timestep ``t``."""
    return guidance.at(t) if isinstance(guidance, Guidance) else float(guidance)


def batch_rng(seed, i):
    """The generator of batch ``i`` of a ``seed``: one SeedSequence stream per (seed, i), so that the batches of
    two seeds never coincide (with ``seed + i``, seeds 0 and 1 shared all batches but one)."""
    return np.random.default_rng((seed, i))


def batch_plan(num, batch_size):
    """(count, size): ``num`` images in ``count`` batches of one ``size`` <= ``batch_size``.

    One shape for every batch means one compiled graph; the last batch is padded (extra images dropped).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"need num >= 1 and batch_size >= 1, got {num} and {batch_size}")
    count = -(-num // batch_size)
    return count, -(-num // count)


def generate(denoiser, image_shape, num, seed=0, batch_size=64, sampler="ddpm", steps=None, spacing="uniform",
             labels=None, guidance=1.0, callback=None, progress=True, **options):
    """Sample ``num`` images [num, C, H, W] float32 with a denoiser in equal batches (:func:`batch_plan`).

    ``denoiser(x_t, t, labels=None, guidance=1.0) -> (x0, eps)`` with ``denoiser.alphas_cumprod`` [T] (a
    :class:`ddpm_ms.sampling.Denoiser`). Batch i draws x_T and its noise from :func:`batch_rng` (seed, i). ``steps`` (default:
    the sampler's) network calls at ``spacing`` timesteps; ``options`` are the sampler's (e.g. ``eta`` for
    ddim). ``labels`` [num] int with ``guidance`` (a w or a :class:`Guidance`) sample a class-conditional model.
    ``callback(info)`` sees every step, with ``info["batch"]``.
    """
    entry = SAMPLERS[sampler]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {unknown[0]!r} (it takes: {list(entry.options)})")
    ab = np.asarray(denoiser.alphas_cumprod, np.float64)
    ts = timesteps(ab, steps or default_steps(sampler, len(ab)), spacing)
    count, size = batch_plan(num, batch_size)
    if labels is not None:
        if len(labels) < num:
            raise ValueError(f"need a label for each of the {num} images, got {len(labels)}")
        labels = np.resize(np.asarray(labels)[:num], count * size)    # the padding repeats the first labels
    bar = tqdm(total=count * len(ts), desc=f"sampling ({sampler}, {len(ts)} steps)", disable=not progress,
               leave=False, unit="step")
    chunks = []
    for i in range(count):
        def on_step(info, batch=i):
            bar.update(1)
            return None if callback is None else callback(dict(info, batch=batch))

        rng = batch_rng(seed, i)
        x_T = _noise(rng, (size, *image_shape))
        batch_labels = None if labels is None else labels[i * size:(i + 1) * size]

        def denoise(x_t, t, y=batch_labels):
            return denoiser(x_t, t) if y is None else denoiser(x_t, t, labels=y, guidance=guidance)

        chunks.append(entry.fn(denoise, x_T, ts, ab, rng, callback=on_step, **options))
    bar.close()
    return np.concatenate(chunks)[:num]
