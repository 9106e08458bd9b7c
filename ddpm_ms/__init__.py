"""ddpm_ms: denoising diffusion probabilistic models on MindSpore.

    import ddpm_ms
    net = ddpm_ms.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    x0 = ddpm_ms.sample(net, sched, image_size=28, batch_size=16, channels=1)
"""
# Importing ddpm_ms changes no MindSpore setting: ddpm_ms.use_device() picks the device and applies the CPU-only
# settings, and the oneDNN ISA cap that MindSpore's own convolutions need on AVX-512 CPUs is set by
# ddpm_ms.kernels only when a model falls back to those convolutions.
from .checkpoint import load_model
from .config import Config, ConfigError, load_config
from .device import use_device
from .export import load_exported
from .diffusion import OBJECTIVES, p_losses, predict_noise_from_start, predict_start_from_noise, q_sample
from . import kernels
from .model import Unet, count_params
from .sampling import (SAMPLERS, Denoiser, Recorder, generate, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                       timesteps)
from .schedule import NoiseSchedule, extract, make_betas
from .train_step import TrainStep
from .trainer import Trainer, build_model, build_run, build_schedule

__version__ = "0.1.0"
__all__ = ["OBJECTIVES", "Config", "ConfigError", "load_config", "p_losses", "predict_noise_from_start", "predict_start_from_noise",
           "q_sample", "Unet", "count_params", "SAMPLERS", "Denoiser", "Recorder", "generate", "sample", "sample_ddim",
           "sample_ddpm", "sample_dpmpp_2m", "timesteps", "NoiseSchedule", "extract", "make_betas", "TrainStep",
           "build_model", "build_run", "build_schedule", "kernels", "load_model", "load_exported", "use_device",
           "Trainer"]
