"""ddpm_ms: denoising diffusion probabilistic models on MindSpore.

    import ddpm_ms
    net = ddpm_ms.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    sched = ddpm_ms.NoiseSchedule.from_name("linear", 200)
    x0 = ddpm_ms.sample(net, sched, image_size=28, batch_size=16, channels=1)
    images = ddpm_ms.Pipeline.from_checkpoint("runs/fashion_cpu/ckpt_step00009360.ckpt").generate(64)

The names below load on first use, so ``import ddpm_ms`` (and ``ddpm_ms.config``, the registries and the
command line's ``--help``) import no MindSpore. Importing changes no MindSpore setting: ``ddpm_ms.use_device()``
picks the device, and building a train step, a Denoiser or a Trainer applies the CPU settings (ddpm_ms.device).
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {   # public name -> the module that defines it
    "Config": "config", "ConfigError": "errors", "UserError": "errors", "load_config": "config",
    "SAMPLERS": "registries", "OBJECTIVES": "registries", "LOSSES": "registries", "LOSS_WEIGHTINGS": "registries",
    "BETA_SCHEDULES": "registries",
    "Recorder": "samplers", "Guidance": "samplers", "generate": "samplers", "timesteps": "samplers",
    "sample_ddim": "samplers",
    "sample_ddpm": "samplers", "sample_dpmpp_2m": "samplers", "sample_dpmpp_2m_sde": "samplers",
    "make_betas": "betas",
    "NoiseSchedule": "schedule", "extract": "schedule",
    "p_losses": "diffusion", "predict_noise_from_start": "diffusion", "predict_start_from_noise": "diffusion",
    "q_sample": "diffusion",
    "Unet": "model", "count_params": "model",
    "Denoiser": "sampling", "sample": "sampling",
    "TrainStep": "train_step",
    "build_model": "build", "build_run": "build", "build_schedule": "build", "load_model": "build",
    "Trainer": "trainer", "Callback": "callbacks",
    "Pipeline": "pipeline",
    "TrainingState": "checkpoint",
    "use_device": "device", "load_exported": "export", "kernels": None,
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddpm_ms' has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name] or name}")
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
