"""Reverse-process sampling loops.

One compiled step (fixed shapes, ``t`` as an int32 Tensor) is reused for all
steps. Noise comes from a seeded numpy Generator on the host, so the same
seed gives the same images in GRAPH and PYNATIVE modes.
"""
import numpy as np
import mindspore as ms
from mindspore import Tensor
from tqdm.auto import tqdm

from .diffusion import p_sample
from .schedule import timestep_tensor


def compile_step(fn, jit=True):
    """ms.jit(fn) when ``jit`` else fn: the one place samplers choose compiled or eager."""
    return ms.jit(fn) if jit else fn


def p_sample_loop(eps_model, sched, shape, seed=0, x_T=None, return_all=False, progress=True, jit=True):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) from x_T ~ N(0, I) down to x_0.

    eps_model(x [B,C,H,W], t [B]) -> eps. ``shape`` = (B, C, H, W).
    Returns x_0 as a float32 ndarray [B, C, H, W], or with ``return_all`` every
    step's output stacked as [T, B, C, H, W] (the last frame is x_0).
    """
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal(shape, dtype=np.float32)) if x_T is None else Tensor(x_T, ms.float32)
    def denoise(x_t, t, z):
        return p_sample(sched, eps_model, x_t, t, z)

    step = compile_step(denoise, jit)
    frames = []
    for i in tqdm(reversed(range(sched.num_timesteps)), total=sched.num_timesteps,
                  desc="DDPM sampling", disable=not progress, leave=False):
        z = Tensor(rng.standard_normal(shape, dtype=np.float32))
        x = step(x, timestep_tensor(i, shape[0]), z)
        if return_all:
            frames.append(x.asnumpy())
    return np.stack(frames) if return_all else x.asnumpy()


def sample(eps_model, sched, image_size, batch_size=16, channels=3, seed=0, return_all=False, progress=True,
           jit=True):
    """Sample ``batch_size`` square images: [B, channels, image_size, image_size] in about [-1, 1]."""
    return p_sample_loop(eps_model, sched, (batch_size, channels, image_size, image_size), seed=seed,
                         return_all=return_all, progress=progress, jit=jit)
