"""Reverse-process samplers: plain functions with one signature (k-diffusion style) around one compiled network.

    x_0 = sampler(denoise, x, timesteps, alphas_cumprod, rng, callback=None, **options)

- ``denoise(x_t, t) -> (x0, eps)``: the network's prediction of x_0 and of the noise at timestep ``t`` (an int)
  for x_t [B,C,H,W] float32 ndarray; a :class:`Denoiser`, or one with its labels bound (:meth:`Denoiser.bind`).
- ``x``: x_T, the starting noise [B,C,H,W] float32 ndarray.
- ``timesteps``: the timesteps visited, descending and ending at 0, one network call each (:func:`timesteps`).
- ``alphas_cumprod``: alpha_bar_t [T] float64, the schedule's.
- ``rng``: a numpy Generator; samplers that add noise draw one z [B,C,H,W] per step.
- ``callback(info)``: called after each step with ``info`` = {i, t, x_t, x0, eps, x} (``x`` is the step's output).

A sampler is this function plus one entry in :data:`SAMPLERS`, which the config, every script and
``scripts/compare_samplers.py`` read. The update maths runs on the host in numpy; the network, the x_0/eps
conversion and the clipping run in one compiled graph held by the :class:`Denoiser` (one per input shape,
reused across steps, batches and calls).
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops
from tqdm.auto import tqdm

from .diffusion import objective_named, predict_noise_from_start


class Denoiser:
    """A network as the samplers see it: ``denoiser(x_t, t) -> (x0, eps)``, numpy in and out.

    ``model(x [B,C,H,W], t [B] int32[, y [B] int32]) -> out`` predicts the target of ``objective`` ("eps", "x0"
    or "v", :data:`ddpm_ms.diffusion.OBJECTIVES`), which converts it to x_0 and eps with the schedule ``sched``.
    With ``clip_denoised`` (improved-diffusion's default) x_0 is clipped to [-1, 1] and eps re-derived from it,
    which keeps an imperfect model's chain in the data range. A class-conditional model (``null_class`` = its
    "no label" index) is called as ``denoiser(x_t, t, labels, guidance)``: classifier-free guidance
    out_u + w (out_c - out_u) (Ho & Salimans 2022) from one batched call; w=0 is unconditional, w=1 conditional.
    (The conversions are linear in ``out`` at a given x_t, so guiding eps, x0 or v is the same.)

    The caller holds the Denoiser: it compiles one graph per input shape on first use (``jit``) and reuses it.
    The graph reads the model's Parameters, so weights assigned in place (training, the EMA swap, checkpoint
    loading) are seen without compiling again. A network that is a compiled graph already (``is_graph``, e.g. from
    :func:`ddpm_ms.load_exported`) runs as it is, with the few ops around it run eagerly.
    """

    def __init__(self, model, sched, clip_denoised=True, null_class=None, jit=True, objective="eps"):
        jit = jit and not getattr(model, "is_graph", False)
        self.model, self.sched, self.clip_denoised, self.null_class = model, sched, clip_denoised, null_class
        self.objective = objective_named(objective)
        target = self.objective

        def model_out(x, t, *cond):
            if not cond:
                return model(x, t)
            y, w = cond
            y_both = ops.concat((y, ops.full_like(y, null_class)))
            out_c, out_u = ops.chunk(model(ops.concat((x, x)), ops.concat((t, t)), y_both), 2, 0)
            return out_u + w * (out_c - out_u)

        def predict(x_t, t, *cond):
            x0, eps = target.split(sched, x_t, t, model_out(x_t, t, *cond))
            if clip_denoised:   # a Python constant: resolved when the graph is built
                x0 = ops.clamp(x0, -1.0, 1.0)
                eps = predict_noise_from_start(sched, x_t, t, x0)
            return x0, eps

        self._predict = ms.jit(predict) if jit else predict

    @classmethod
    def from_config(cls, model, sched, cfg, clip_denoised=True, jit=True):
        """The Denoiser for a model trained with Config ``cfg`` (its objective and, if conditional, null class)."""
        return cls(model, sched, clip_denoised, null_class=cfg.model.num_classes, jit=jit,
                   objective=cfg.diffusion.objective)

    @property
    def num_timesteps(self):
        """T of the schedule."""
        return self.sched.num_timesteps

    def __call__(self, x_t, t, labels=None, guidance=1.0):
        """x_t [B,C,H,W] float32, t an int or [B] ints (labels [B] and guidance w if conditional) -> (x0, eps)."""
        x_t = np.asarray(x_t, np.float32)
        t = np.broadcast_to(np.asarray(t, np.int32), (len(x_t),))
        args = (Tensor(x_t), Tensor(np.ascontiguousarray(t)))
        if labels is not None:
            if self.null_class is None:
                raise ValueError("labels need a class-conditional Denoiser (null_class)")
            args += (Tensor(np.asarray(labels, np.int32)), Tensor(np.float32(guidance)))
        x0, eps = self._predict(*args)
        return x0.asnumpy(), eps.asnumpy()

    def bind(self, labels=None, guidance=1.0):
        """``denoise(x_t, t)`` with the labels [B] and guidance w fixed (itself when ``labels`` is None)."""
        return self if labels is None else partial(self, labels=labels, guidance=guidance)


# ----------------------------------------------------------------------------------------------- timesteps

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


# ------------------------------------------------------------------------------------------------ samplers

def sample_ddpm(denoise, x, ts, alphas_cumprod, rng, callback=None, eta=1.0):
    """Ancestral sampling: x_prev ~ q(x_prev | x_t, x0_pred), the posterior of eq. 6-7, its std scaled by eta.

    Over every timestep this is Ho et al. 2020, Alg. 2 with sigma_t^2 = beta~_t; over fewer it is the respaced
    chain of Nichol & Dhariwal 2021 (beta_t = 1 - alpha_bar_t / alpha_bar_prev). eta=0 is the "no noise
    added back" ablation.
    """
    for i, t in enumerate(ts):
        a_t, a_prev = _alpha_bar_next(alphas_cumprod, ts, i)
        x0, eps = denoise(x, t)
        beta = 1.0 - a_t / a_prev
        mean = (np.sqrt(a_prev) * beta * x0 + np.sqrt(1.0 - beta) * (1.0 - a_prev) * x) / (1.0 - a_t)   # eq. 7
        std = eta * np.sqrt(beta * (1.0 - a_prev) / (1.0 - a_t))                     # beta~_t (eq. 7); 0 at t=0
        x_next = (mean + std * _noise(rng, x.shape)).astype(np.float32)
        if callback is not None:
            callback({"i": i, "t": int(t), "x_t": x, "x0": x0, "eps": eps, "x": x_next})
        x = x_next
    return x


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
        if callback is not None:
            callback({"i": i, "t": int(t), "x_t": x, "x0": x0, "eps": eps, "x": x_next})
        x = x_next
    return x


def sample_dpmpp_2m(denoise, x, ts, alphas_cumprod, rng, callback=None, eta=0.0):
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
        if callback is not None:
            callback({"i": i, "t": int(t), "x_t": x, "x0": x0, "eps": eps, "x": x_next})
        x, x0_prev, h_prev = x_next, x0, h
    return x


@dataclass(frozen=True)
class SamplerEntry:
    """A registered sampler: its function, default network calls (None: every timestep), user options."""
    fn: Callable
    default_steps: Optional[int]
    options: Tuple[str, ...]
    summary: str


SAMPLERS = {
    "ddpm": SamplerEntry(sample_ddpm, None, (), "DDPM ancestral sampling (Ho et al. 2020, Alg. 2)"),
    "ddpm-no-noise": SamplerEntry(partial(sample_ddpm, eta=0.0), None, (),
                                  "the ablation: DDPM's means with no noise added back"),
    "ddim": SamplerEntry(sample_ddim, 50, ("eta",), "DDIM (Song et al. 2021); eta 0 deterministic, 1 DDPM-like"),
    "dpm++2m": SamplerEntry(sample_dpmpp_2m, 20, (),
                            "DPM-Solver++(2M) (Lu et al. 2022): deterministic, second order, multistep"),
    "dpm++2m-sde": SamplerEntry(partial(sample_dpmpp_2m, eta=1.0), 20, (),
                                "DPM-Solver++(2M) SDE: the same steps with noise added back, like DDPM"),
}


def sampler_entry(name):
    """The SAMPLERS entry of ``name``; ValueError naming the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


def default_steps(name, num_timesteps):
    """The network calls ``name`` makes when no steps are given (at most ``num_timesteps``)."""
    return min(sampler_entry(name).default_steps or num_timesteps, num_timesteps)


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
    """Sample ``num`` images [num, C, H, W] float32 with a :class:`Denoiser` in equal batches (:func:`batch_plan`).

    Batch i draws x_T and its noise from ``seed + i``. ``steps`` (default: the sampler's) network calls at
    ``spacing`` timesteps; ``options`` are the sampler's (e.g. ``eta`` for ddim). ``labels`` [num] int with
    ``guidance`` w sample a class-conditional model. ``callback(info)`` sees every step, with ``info["batch"]``.
    """
    entry = sampler_entry(sampler)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {unknown[0]!r} (it takes: {list(entry.options)})")
    ab = denoiser.sched.np["alphas_cumprod"]
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
            if callback is not None:
                callback(dict(info, batch=batch))

        rng = np.random.default_rng(seed + i)
        x_T = _noise(rng, (size, *image_shape))
        denoise = denoiser.bind(None if labels is None else labels[i * size:(i + 1) * size], guidance)
        chunks.append(entry.fn(denoise, x_T, ts, ab, rng, callback=on_step, **options))
    bar.close()
    return np.concatenate(chunks)[:num]


def sample(model, sched, image_size, batch_size=16, channels=3, seed=0, sampler="ddpm", steps=None,
           clip_denoised=True, progress=True, objective="eps", **options):
    """Notebook shortcut: ``batch_size`` square images [B, channels, S, S] from an unconditional ``model``.

    Builds a :class:`Denoiser` (one compile) per call; hold one and call :func:`generate` to reuse it.
    """
    denoiser = Denoiser(model, sched, clip_denoised, objective=objective)
    return generate(denoiser, (channels, image_size, image_size), batch_size, seed=seed,
                    batch_size=batch_size, sampler=sampler, steps=steps, progress=progress, **options)
