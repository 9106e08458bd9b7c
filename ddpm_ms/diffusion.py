"""Gaussian diffusion maths (Ho et al. 2020). Owns no network.

Each function takes the :class:`~ddpm_ms.schedule.NoiseSchedule` first and a
noise-prediction model ``eps_model(x_t, t[, y]) -> eps`` where one is needed. The reverse-process steps
are in :mod:`ddpm_ms.sampling`.
Randomness is injectable: pass ``noise`` to make a call deterministic.
"""
import numpy as np
from mindspore import Tensor, ops

from .schedule import extract

LOSS_TYPES = ("huber", "l1", "l2")


def randn_like(x, rng=None):
    """Standard normal Tensor shaped like x, from numpy ``rng`` (a Generator) when given."""
    if rng is None:
        return ops.standard_normal(x.shape).astype(x.dtype)
    return Tensor(rng.standard_normal(x.shape, dtype=np.float32))


def q_sample(sched, x_start, t, noise=None):
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (eq. 4).

    x_start [B, C, H, W], t [B] int, noise like x_start -> x_t [B, C, H, W].
    """
    if noise is None:
        noise = randn_like(x_start)
    return (extract(sched.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + extract(sched.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)


def elementwise_loss(pred, target, loss_type="huber"):
    """Per-element loss: 'huber' (smooth L1, beta=1, the tutorial's), 'l1' or 'l2'."""
    diff = pred - target
    if loss_type == "huber":
        adiff = ops.abs(diff)
        return ops.where(adiff < 1.0, 0.5 * diff * diff, adiff - 0.5)
    if loss_type == "l1":
        return ops.abs(diff)
    if loss_type == "l2":
        return diff * diff
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")


def p_losses(sched, eps_model, x_start, t, noise=None, loss_type="huber", y=None):
    """Simplified DDPM objective (eq. 14) with p2 weighting: mean_i w_t * loss(eps, eps_theta(x_t, t)).

    x_start [B, C, H, W], t [B] int, y optional [B] int labels -> scalar loss.
    """
    if noise is None:
        noise = randn_like(x_start)
    x_noisy = q_sample(sched, x_start, t, noise)
    predicted_noise = eps_model(x_noisy, t) if y is None else eps_model(x_noisy, t, y)
    loss = elementwise_loss(predicted_noise, noise, loss_type)
    loss = loss.reshape((loss.shape[0], -1)) * extract(sched.p2_loss_weight, t, (1, 1))
    return loss.mean()


def predict_start_from_noise(sched, x_t, t, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)   (eq. 4 inverted)."""
    return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def predict_noise_from_start(sched, x_t, t, x_start):
    """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1)   (eq. 4 solved for eps)."""
    return ((extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start)
            / extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape))
