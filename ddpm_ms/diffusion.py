"""Gaussian diffusion maths (Ho et al. 2020). Owns no network.

Each function takes the :class:`~ddpm_ms.schedule.NoiseSchedule` first and a
model ``model(x_t, t[, y]) -> out`` where one is needed, whose output is the target of an :class:`Objective`
(eps, x0 or v). The objectives are the one place where eps, x_0 and v convert into each other, and
:data:`LOSS_WEIGHTINGS` the one place for per-timestep loss weights. The reverse-process steps are in
:mod:`ddpm_ms.sampling`. Randomness is injectable: pass ``noise`` to make a call deterministic.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from .registries import LOSS_WEIGHTINGS, LOSSES, OBJECTIVES
from .schedule import extract
from .weighting import eps_error_ratio

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


def huber_loss(diff):
    """Smooth L1 with beta=1 (the tutorial's): 0.5 d^2 where |d| < 1, |d| - 0.5 elsewhere."""
    adiff = ops.abs(diff)
    return ops.where(adiff < 1.0, 0.5 * diff * diff, adiff - 0.5)


def l1_loss(diff):
    """|d|."""
    return ops.abs(diff)


def l2_loss(diff):
    """d^2."""
    return diff * diff


def loss_named(loss_type):
    """The per-element loss function registered as ``loss_type`` in :data:`ddpm_ms.registries.LOSSES`."""
    return LOSSES.load(loss_type)


def elementwise_loss(pred, target, loss_type="huber"):
    """Per-element loss of pred - target: a name in :data:`LOSSES` ('huber', 'l1', 'l2') or such a function."""
    return (loss_named(loss_type) if isinstance(loss_type, str) else loss_type)(pred - target)


def p_losses(sched, model, x_start, t, noise=None, loss_type="huber", y=None, objective="eps", weights=None):
    """The simplified objective (eq. 14) for any :class:`Objective`: mean_i w_t * loss(target, model(x_t, t)).

    x_start [B, C, H, W], t [B] int, y optional [B] int labels, ``objective`` a name in :data:`OBJECTIVES` (or
    one), ``weights`` [T] float32 per-timestep loss weights (:func:`loss_weights`; None: unweighted) -> scalar.
    With objective "eps" and no weights this is the tutorial's loss.
    """
    if isinstance(objective, str):
        objective = objective_named(objective)
    if noise is None:
        noise = randn_like(x_start)
    x_noisy = q_sample(sched, x_start, t, noise)
    out = model(x_noisy, t) if y is None else model(x_noisy, t, y)
    loss = elementwise_loss(out, objective.target(sched, x_start, noise, t), loss_type)
    loss = loss.reshape((loss.shape[0], -1))
    if weights is not None:
        loss = loss * extract(weights, t, (1, 1))
    return loss.mean()


def predict_start_from_noise(sched, x_t, t, eps):
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)   (eq. 4 inverted)."""
    return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def predict_noise_from_start(sched, x_t, t, x_start):
    """eps = (x_t / sqrt(alpha_bar_t) - x_0) / sqrt(1 / alpha_bar_t - 1)   (eq. 4 solved for eps)."""
    return ((extract(sched.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x_start)
            / extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


# ---------------------------------------------------------------------------------------------- objectives
# What the network predicts. Each objective gives its regression target from (x_0, eps), converts a prediction
# back to (x_0, eps) given x_t, and says how its squared error relates to the error of the implied eps.

@ms.jit_class
class EpsObjective:
    """Predict the noise eps (Ho et al. 2020, eq. 14)."""
    name = "eps"

    def target(self, sched, x_start, noise, t):   # pylint: disable=unused-argument
        """The regression target [B,C,H,W] for x_start and noise at t [B]."""
        return noise

    def split(self, sched, x_t, t, out):
        """(x0, eps) [B,C,H,W] from the network's output ``out`` at x_t, t."""
        return predict_start_from_noise(sched, x_t, t, out), out

    def eps_error_ratio(self, snr):
        """|eps - eps_hat|^2 / |target - out|^2 at SNR_t [T] float64 (:mod:`ddpm_ms.weighting`)."""
        return eps_error_ratio(self.name, snr)


@ms.jit_class
class X0Objective:
    """Predict the clean image x_0 (eps from eq. 4 solved for it)."""
    name = "x0"

    def target(self, sched, x_start, noise, t):   # pylint: disable=unused-argument
        """The regression target [B,C,H,W] for x_start and noise at t [B]."""
        return x_start

    def split(self, sched, x_t, t, out):
        """(x0, eps) [B,C,H,W] from the network's output ``out`` at x_t, t."""
        return out, predict_noise_from_start(sched, x_t, t, out)

    def eps_error_ratio(self, snr):
        """|eps - eps_hat|^2 / |x0 - x0_hat|^2 = SNR_t (:mod:`ddpm_ms.weighting`)."""
        return eps_error_ratio(self.name, snr)


@ms.jit_class
class VObjective:
    """Predict the velocity v = sqrt(ab) eps - sqrt(1 - ab) x_0 (Salimans & Ho 2022, Sec. 4)."""
    name = "v"

    def target(self, sched, x_start, noise, t):
        """The regression target [B,C,H,W] for x_start and noise at t [B]."""
        return (extract(sched.sqrt_alphas_cumprod, t, x_start.shape) * noise
                - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start)

    def split(self, sched, x_t, t, out):
        """(x0, eps) from v: x0 = sqrt(ab) x_t - sqrt(1 - ab) v, eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
        a = extract(sched.sqrt_alphas_cumprod, t, x_t.shape)
        s = extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return a * x_t - s * out, s * x_t + a * out

    def eps_error_ratio(self, snr):
        """|eps - eps_hat|^2 / |v - v_hat|^2 = SNR_t / (SNR_t + 1) (:mod:`ddpm_ms.weighting`)."""
        return eps_error_ratio(self.name, snr)


EPS, X0, V = EpsObjective(), X0Objective(), VObjective()   # registered in ddpm_ms.registries.OBJECTIVES


def objective_named(name):
    """The objective registered as ``name`` ("eps", "x0" or "v")."""
    return OBJECTIVES.load(name)


def loss_weights(sched, objective="eps", weighting="none", **params):
    """Per-timestep loss weights [T] float64 for an objective, from ``sched.np["snr"]`` (:mod:`ddpm_ms.weighting`).

    ``params``: the diffusion.* keys the weighting reads (``LOSS_WEIGHTINGS[weighting].params``).
    """
    OBJECTIVES[objective]   # pylint: disable=pointless-statement  # one-line error for an unknown name
    return LOSS_WEIGHTINGS.load(weighting)(sched.np["snr"], objective, **params)
