"""A trained model, ready to sample: what the sample, evaluate, compare-samplers and export commands share.

    pipe = Pipeline.from_checkpoint("runs/fashion_cpu/ckpt_step00009360.ckpt")
    images = pipe.generate(64, sampler="dpm++2m", steps=20)          # [64, C, H, W] float32 in [-1, 1]
    shoes = pipe.generate(16, classes=7, guidance=3.0)                # a class-conditional checkpoint
"""
import numpy as np

from . import build
from .samplers import Guidance, generate
from .sampling import Denoiser


class Pipeline:
    """A network with its schedule and config, and the one compiled :class:`~ddpm_ms.sampling.Denoiser` over it.

    ``model(x [B,C,H,W], t [B][, y [B]])`` predicts the config's objective; ``clip_denoised`` clips x_0 at each step.
    """

    def __init__(self, model, sched, config, clip_denoised=True, jit=True):
        self.model, self.sched, self.config = model, sched, config
        self.denoiser = Denoiser.from_config(model, sched, config, clip_denoised=clip_denoised, jit=jit)

    @classmethod
    def from_checkpoint(cls, path, use_ema=True, clip_denoised=True):
        """The pipeline of a checkpoint written by training (its EMA weights when stored and ``use_ema``)."""
        model, sched, cfg, _ = build.load_model(path, use_ema=use_ema)
        return cls(model, sched, cfg, clip_denoised)

    @classmethod
    def from_exported(cls, path, clip_denoised=True):
        """The pipeline of a MindIR network written by ``ddpm-ms export`` (its config beside it)."""
        from .export import load_exported  # pylint: disable=import-outside-toplevel
        net, sched, cfg = load_exported(path)
        return cls(net, sched, cfg, clip_denoised)

    @property
    def image_shape(self):
        """(C, H, W) of the images the model makes."""
        size = self.config.data.image_size
        return (self.config.model.channels, size, size)

    @property
    def num_classes(self):
        """Classes of a class-conditional model, else None."""
        return self.config.model.num_classes

    @property
    def num_timesteps(self):
        """T of the schedule."""
        return self.sched.num_timesteps

    def labels(self, num, classes=None):
        """Labels [num] for ``classes``: None (0, 1, 2, ... in turn), a class index, or [num] indices; None for an
        unconditional model."""
        if self.num_classes is None:
            if classes is not None:
                raise ValueError("classes need a class-conditional model (model.num_classes)")
            return None
        if classes is None:
            return np.arange(num) % self.num_classes
        return np.broadcast_to(np.asarray(classes, np.int64), (num,)).copy()

    def generate(self, num, seed=0, batch_size=64, sampler="ddpm", steps=None, spacing="uniform", classes=None,
                 guidance=None, callback=None, progress=True, **options):
        """``num`` images [num, C, H, W] float32 (see :func:`ddpm_ms.samplers.generate` for the arguments).

        ``classes`` as in :meth:`labels`; ``guidance`` (a w or a :class:`~ddpm_ms.samplers.Guidance`) defaults to
        the config's train.guidance on its train.guidance_interval.
        """
        t = self.config.train
        w = Guidance(t.guidance, t.guidance_interval) if guidance is None else guidance
        return generate(self.denoiser, self.image_shape, num, seed=seed, batch_size=batch_size, sampler=sampler,
                        steps=steps, spacing=spacing, labels=self.labels(num, classes), guidance=w,
                        callback=callback, progress=progress, **options)
