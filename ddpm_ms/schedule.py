"""Beta schedules and the precomputed diffusion coefficients.

Everything is computed once in float64 numpy and stored on a
:class:`NoiseSchedule` as float32 Tensors (and the float64 arrays under
``.np`` for tests and host-side maths). Symbols follow Ho et al. 2020:
beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s.
Index t runs 0..T-1 (paper t = 1..T).
"""
import math

import numpy as np
from mindspore import Tensor


def linear_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02):
    """Ho et al. 2020, Sec. 4: beta linear from 1e-4 to 0.02. Returns [T] float64."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def quadratic_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02):
    """beta = linspace(sqrt(beta_start), sqrt(beta_end), T)**2. Returns [T] float64."""
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=np.float64) ** 2


def sigmoid_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02):
    """beta = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start. Returns [T] float64."""
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, timesteps, dtype=np.float64)))
    return s * (beta_end - beta_start) + beta_start


def cosine_beta_schedule(timesteps, s=0.008, max_beta=0.9999):
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2.

    beta_t = 1 - alpha_bar(t)/alpha_bar(t-1), clipped to [1e-4, max_beta]. Returns [T] float64.
    """
    x = np.linspace(0, timesteps, timesteps + 1, dtype=np.float64)
    f = np.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 1e-4, max_beta)


BETA_SCHEDULES = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "quadratic": quadratic_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}
SCHEDULES_WITHOUT_BETA_RANGE = ("cosine",)   # defined by alpha_bar(t), not by beta_start/beta_end


def make_betas(name, timesteps, beta_start=1e-4, beta_end=0.02):
    """Betas [T] float64 for a schedule named in ``BETA_SCHEDULES``."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {sorted(BETA_SCHEDULES)}")
    if name in SCHEDULES_WITHOUT_BETA_RANGE:
        return BETA_SCHEDULES[name](timesteps)
    return BETA_SCHEDULES[name](timesteps, beta_start, beta_end)


class NoiseSchedule:
    """All per-timestep coefficients of a Gaussian diffusion with T steps.

    Attributes (each a float32 Tensor of shape [T]; float64 copies in ``self.np``):
      betas                       beta_t
      alphas                      alpha_t = 1 - beta_t
      alphas_cumprod              alpha_bar_t                              (eq. 4)
      alphas_cumprod_prev         alpha_bar_{t-1}, with alpha_bar_{-1} = 1
      sqrt_alphas_cumprod         sqrt(alpha_bar_t)
      sqrt_one_minus_alphas_cumprod  sqrt(1 - alpha_bar_t)
      sqrt_recip_alphas           1 / sqrt(alpha_t)                        (eq. 11)
      sqrt_recip_alphas_cumprod   1 / sqrt(alpha_bar_t)
      sqrt_recipm1_alphas_cumprod sqrt(1 / alpha_bar_t - 1)
      posterior_variance          beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  (eq. 7)
      posterior_std               sqrt(beta~_t); 0 at t=0, so the last step adds no noise
      snr                         SNR_t = alpha_bar_t / (1 - alpha_bar_t)  (Kingma et al. 2021, eq. 2)
    """

    FIELDS = ("betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
              "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas", "sqrt_recip_alphas_cumprod",
              "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_std", "posterior_mean_coef1",
              "posterior_mean_coef2", "snr")

    def __init__(self, betas):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a 1-D array with values in (0, 1)")
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.np = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas": np.sqrt(1.0 / alphas),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_std": np.sqrt(posterior_variance),
            # eq. 7: mu~_t(x_t, x_0) = coef1 x_0 + coef2 x_t
            "posterior_mean_coef1": np.sqrt(alphas_cumprod_prev) * betas / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": np.sqrt(alphas) * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        }
        self.num_timesteps = int(betas.shape[0])
        for name in self.FIELDS:
            setattr(self, name, Tensor(self.np[name].astype(np.float32)))

    @classmethod
    def from_name(cls, name="linear", timesteps=200, beta_start=1e-4, beta_end=0.02):
        """Build from a schedule name, e.g. ``NoiseSchedule.from_name("linear", 200)``."""
        return cls(make_betas(name, timesteps, beta_start, beta_end))


def extract(a, t, shape):
    """Gather a[t] for a batch and reshape for broadcasting: a [T], t [B] int -> [B, 1, ..., 1].

    ``shape`` is the shape of the tensor the result multiplies (len(shape) dims).
    """
    out = a.gather(t, 0)
    return out.reshape((t.shape[0],) + (1,) * (len(shape) - 1))
