"""ddpm_ms: denoising diffusion probabilistic models on MindSpore.

    import ddpm_ms
    net = ddpm_ms.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    x0 = ddpm_ms.sample(net, sched, image_size=28, batch_size=16, channels=1)
"""
import os

# A busy-waiting host queue steals a core on small CPU machines; blocking runs are ~2x faster there.
os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
# The oneDNN ISA cap that MindSpore's own convolutions need on AVX-512 CPUs is set by ddpm_ms.kernels, and only
# when the model falls back to those convolutions.

# pylint: disable=wrong-import-position
from .config import Config, ConfigError, load_config
from .diffusion import p_losses, predict_noise_from_start, predict_start_from_noise, q_sample
from . import kernels
from .model import Unet, count_params
from .sampling import (SAMPLERS, Denoiser, Recorder, generate, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m,
                       timesteps)
from .schedule import NoiseSchedule, extract, make_betas
from .trainer import TrainStep, build_model, build_run, build_schedule

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "p_losses", "predict_noise_from_start", "predict_start_from_noise",
           "q_sample", "Unet", "count_params", "SAMPLERS", "Denoiser", "Recorder", "generate", "sample", "sample_ddim",
           "sample_ddpm", "sample_dpmpp_2m", "timesteps", "NoiseSchedule", "extract", "make_betas", "TrainStep",
           "build_model", "build_run", "build_schedule", "kernels"]
