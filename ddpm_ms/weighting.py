"""Per-timestep loss weights, numpy only, registered in :data:`ddpm_ms.registries.LOSS_WEIGHTINGS`.

Each weighting is written as a weight on the eps loss, w_eps(SNR_t), and applied to an objective's loss as
w_eps * eps_error_ratio(SNR_t) (:data:`EPS_ERROR_RATIOS`), so every objective minimises the same weighted eps
error (exactly so for l2).
"""
import math

import numpy as np


def _ones(snr):
    return np.ones_like(np.asarray(snr, np.float64))


# |eps - eps_hat|^2 / |target - out|^2 at SNR_t for each objective:
#   eps: 1;  x0: SNR_t, since eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab);
#   v: ab = SNR_t / (SNR_t + 1), since eps = sqrt(1 - ab) x_t + sqrt(ab) v.
EPS_ERROR_RATIOS = {
    "eps": _ones,
    "x0": lambda snr: np.asarray(snr, np.float64),
    "v": lambda snr: np.asarray(snr, np.float64) / (np.asarray(snr, np.float64) + 1.0),
}


def eps_error_ratio(objective, snr):
    """|eps - eps_hat|^2 / |target - out|^2 of ``objective`` ("eps", "x0", "v") at SNR_t [T] float64."""
    return EPS_ERROR_RATIOS[objective](snr)


def no_weighting(snr, objective, **_):
    """1 on the objective's own loss."""
    return _ones(snr)


def p2_weighting(snr, objective, p2_gamma=0.0, p2_k=1.0, **_):
    """P2 (Choi et al. 2022, eq. 8): (k + SNR_t)^-gamma on the eps loss."""
    return (p2_k + snr) ** -p2_gamma * eps_error_ratio(objective, snr)


def min_snr_weighting(snr, objective, min_snr_gamma=5.0, **_):
    """Min-SNR-gamma (Hang et al. 2023): min(SNR_t, gamma) on the x_0 loss; min(SNR, g)/SNR for eps,
    min(SNR, g)/(SNR + 1) for v."""
    return np.minimum(snr, min_snr_gamma) / snr * eps_error_ratio(objective, snr)



def _normal_cdf(z):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(z, np.float64) / math.sqrt(2.0)))


def edm_weighting(snr, objective, edm_p_mean=-1.2, edm_p_std=1.2, edm_sigma_data=0.5, **_):
    """EDM (Karras et al. 2022, Table 1) on the discrete timesteps, with sigma_t = SNR_t^-1/2 (x_t / sqrt(ab) =
    x0 + sigma eps): its weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 on the x_0 loss, times its noise-level
    distribution ln sigma ~ N(P_mean, P_std^2) as an importance weight T p_t on the uniformly drawn t (p_t: the
    normal's mass between the midpoints of ln sigma around t). Scaled to mean 1 over t, so the loss keeps its size.
    """
    snr = np.asarray(snr, np.float64)
    log_sigma = -0.5 * np.log(snr)                       # increasing in t
    edges = np.concatenate([[-np.inf], (log_sigma[1:] + log_sigma[:-1]) / 2, [np.inf]])
    mass = np.diff(_normal_cdf((edges - edm_p_mean) / edm_p_std))
    sigma2, sd2 = 1.0 / snr, edm_sigma_data ** 2
    lam_x0 = (sigma2 + sd2) / (sigma2 * sd2)
    w = lam_x0 / snr * eps_error_ratio(objective, snr) * len(snr) * mass
    return w / w.mean()
