"""Beta schedules: [T] float64 numpy arrays (Ho et al. 2020 symbols; index t = 0..T-1 is paper t = 1..T).

Registered in :data:`ddpm_ms.registries.BETA_SCHEDULES`; :class:`ddpm_ms.schedule.NoiseSchedule` turns one into
the diffusion coefficients.
"""
import math

import numpy as np

from .registries import BETA_SCHEDULES


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


def make_betas(name, timesteps, beta_start=1e-4, beta_end=0.02):
    """Betas [T] float64 for a schedule named in ``BETA_SCHEDULES`` (beta_start/end only where it reads them)."""
    entry = BETA_SCHEDULES[name]
    return entry.fn(timesteps, beta_start, beta_end) if entry.beta_range else entry.fn(timesteps)
