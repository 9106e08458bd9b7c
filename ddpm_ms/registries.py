"""Every named choice of ddpm_ms, with its metadata, importable without MindSpore.

Config validation, the command line and ``--help`` read these; the implementations load on first use
(:meth:`ddpm_ms.registry.Registry.load`). A new choice is its function plus one line here, and its test.
"""
from .registry import Registry
from .samplers import SAMPLERS, SPACINGS  # numpy only; the samplers register themselves

__all__ = ["BETA_SCHEDULES", "LOSSES", "OBJECTIVES", "LOSS_WEIGHTINGS", "SAMPLERS", "SPACINGS", "BLOCK_TYPES",
           "DEVICES", "AMP_LEVELS", "DATASETS"]

BETA_SCHEDULES = Registry("beta schedule")
BETA_SCHEDULES.add("linear", "ddpm_ms.betas:linear_beta_schedule", "Ho et al. 2020: beta linear in t",
                   beta_range=True)
BETA_SCHEDULES.add("cosine", "ddpm_ms.betas:cosine_beta_schedule", "Nichol & Dhariwal 2021, eq. 17",
                   beta_range=False)   # defined by alpha_bar(t): beta_start/beta_end are not read
BETA_SCHEDULES.add("quadratic", "ddpm_ms.betas:quadratic_beta_schedule", "sqrt(beta) linear in t",
                   beta_range=True)
BETA_SCHEDULES.add("sigmoid", "ddpm_ms.betas:sigmoid_beta_schedule", "beta a sigmoid of t", beta_range=True)

LOSSES = Registry("loss type")
LOSSES.add("huber", "ddpm_ms.diffusion:huber_loss", "smooth L1, beta 1 (the tutorial's)")
LOSSES.add("l1", "ddpm_ms.diffusion:l1_loss", "|d|")
LOSSES.add("l2", "ddpm_ms.diffusion:l2_loss", "d^2 (Ho et al. 2020, eq. 14)")

OBJECTIVES = Registry("objective")
OBJECTIVES.add("eps", "ddpm_ms.diffusion:EPS", "predict the noise (Ho et al. 2020)")
OBJECTIVES.add("x0", "ddpm_ms.diffusion:X0", "predict the clean image")
OBJECTIVES.add("v", "ddpm_ms.diffusion:V", "predict v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022)")

LOSS_WEIGHTINGS = Registry("loss weighting")   # params: the diffusion.* keys each one reads
LOSS_WEIGHTINGS.add("none", "ddpm_ms.weighting:no_weighting", "1 on the objective's own loss", params=())
LOSS_WEIGHTINGS.add("p2", "ddpm_ms.weighting:p2_weighting", "P2 (Choi et al. 2022)", params=("p2_gamma", "p2_k"))
LOSS_WEIGHTINGS.add("min_snr", "ddpm_ms.weighting:min_snr_weighting", "Min-SNR-gamma (Hang et al. 2023)",
                    params=("min_snr_gamma",))
LOSS_WEIGHTINGS.add("edm", "ddpm_ms.weighting:edm_weighting",
                    "EDM's loss weight and noise-level distribution (Karras et al. 2022)",
                    params=("edm_p_mean", "edm_p_std", "edm_sigma_data"))

BLOCK_TYPES = ("convnext", "resnet")
DEVICES = ("auto", "CPU", "GPU", "Ascend")
AMP_LEVELS = ("O0", "O1", "O2", "O3")
DATASETS = ("fashion_mnist", "mnist", "cifar10", "image_folder")

