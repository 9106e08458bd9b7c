"""Beta schedules and the precomputed diffusion coefficients.

Everything is computed once in float64 numpy and stored on a
:class:`NoiseSchedule` as float32 Tensors (and the float64 arrays under
``.np`` for tests and host-side maths). Symbols follow Ho et al. 2020:
beta_t, alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s.
Index t runs 0..T-1 (paper t = 1..T).
"""
import numpy as np
from mindspore import Tensor

from .betas import make_betas  # noqa: F401  (re-exported: the schedules are numpy-only, in ddpm_ms.betas)


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
