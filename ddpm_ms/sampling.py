"""The network as the samplers see it: :class:`Denoiser`, one compiled graph around a MindSpore model.

The samplers themselves are plain numpy functions in :mod:`ddpm_ms.samplers`; the network,
the x_0/eps conversion, guidance and clipping run in one compiled graph held by the Denoiser (one per input
shape, reused across steps, batches and calls).
"""
from functools import partial

import numpy as np
import mindspore as ms
from mindspore import Tensor, ops

from .device import ensure_fast_cpu_settings
from .diffusion import objective_named, predict_noise_from_start
from .samplers import generate, guidance_at


class Denoiser:
    """A network as the samplers see it: ``denoiser(x_t, t) -> (x0, eps)``, numpy in and out.

    ``model(x [B,C,H,W], t [B] int32[, y [B] int32]) -> out`` predicts the target of ``objective`` ("eps", "x0"
    or "v", :data:`ddpm_ms.diffusion.OBJECTIVES`), which converts it to x_0 and eps with the schedule ``sched``.
    With ``clip_denoised`` (improved-diffusion's default) x_0 is clipped to [-1, 1] and eps re-derived from it,
    which keeps an imperfect model's chain in the data range. A class-conditional model (``null_class`` = its
    "no label" index) is called as ``denoiser(x_t, t, labels, guidance)``: classifier-free guidance
    out_u + w (out_c - out_u) (Ho & Salimans 2022) from one batched call; w=0 is unconditional, w=1 conditional
    (one call of the conditional model alone). ``guidance`` is a float or a :class:`Guidance`.
    (The conversions are linear in ``out`` at a given x_t, so guiding eps, x0 or v is the same.)

    The caller holds the Denoiser: it compiles one graph per input shape on first use (``jit``) and reuses it.
    The graph reads the model's Parameters, so weights assigned in place (training, the EMA swap, checkpoint
    loading) are seen without compiling again. A network that is a compiled graph already (``is_graph``, e.g. from
    :func:`ddpm_ms.load_exported`) runs as it is, with the few ops around it run eagerly.
    """

    def __init__(self, model, sched, clip_denoised=True, null_class=None, jit=True, objective="eps"):
        ensure_fast_cpu_settings()
        jit = jit and not getattr(model, "is_graph", False)
        self.model, self.sched, self.clip_denoised, self.null_class = model, sched, clip_denoised, null_class
        self.objective = objective_named(objective)
        target = self.objective

        def model_out(x, t, *cond):
            if not cond:
                return model(x, t)
            if len(cond) == 1:      # w = 1: the conditional model alone
                return model(x, t, cond[0])
            y, w = cond
            y_both = ops.concat((y, ops.full_like(y, null_class)))
            out_c, out_u = ops.chunk(model(ops.concat((x, x)), ops.concat((t, t)), y_both), 2, 0)
            return out_u + w * (out_c - out_u)

        def predict(x_t, t, *cond):
            x0, eps = target.split(sched, x_t, t, model_out(x_t, t, *cond))
            if clip_denoised:   # a Python constant: resolved when the graph is built
                x0 = ops.clamp(x0, -1.0, 1.0)
                eps = predict_noise_from_start(sched, x_t, t, x0)
            return x0, eps

        self._predict = ms.jit(predict) if jit else predict

    @classmethod
    def from_config(cls, model, sched, cfg, clip_denoised=True, jit=True):
        """The Denoiser for a model trained with Config ``cfg`` (its objective and, if conditional, null class)."""
        return cls(model, sched, clip_denoised, null_class=cfg.model.num_classes, jit=jit,
                   objective=cfg.diffusion.objective)

    @property
    def num_timesteps(self):
        """T of the schedule."""
        return self.sched.num_timesteps

    @property
    def alphas_cumprod(self):
        """alpha_bar_t [T] float64, what the samplers step with."""
        return self.sched.np["alphas_cumprod"]

    def __call__(self, x_t, t, labels=None, guidance=1.0):
        """x_t [B,C,H,W] float32, t an int or [B] ints (labels [B] and guidance w if conditional) -> (x0, eps)."""
        x_t = np.asarray(x_t, np.float32)
        t = np.broadcast_to(np.asarray(t, np.int32), (len(x_t),))
        args = (Tensor(x_t), Tensor(np.ascontiguousarray(t)))
        if labels is not None:
            if self.null_class is None:
                raise ValueError("labels need a class-conditional Denoiser (null_class)")
            w = guidance_at(guidance, t)
            args += (Tensor(np.asarray(labels, np.int32)),) + (() if w == 1.0 else (Tensor(np.float32(w)),))
        x0, eps = self._predict(*args)
        return x0.asnumpy(), eps.asnumpy()

    def bind(self, labels=None, guidance=1.0):
        """``denoise(x_t, t)`` with the labels [B] and guidance (a w or a :class:`Guidance`) fixed (itself when
        ``labels`` is None)."""
        return self if labels is None else partial(self, labels=labels, guidance=guidance)



def sample(model, sched, image_size, batch_size=16, channels=3, seed=0, sampler="ddpm", steps=None,
           clip_denoised=True, progress=True, objective="eps", **options):
    """Notebook shortcut: ``batch_size`` square images [B, channels, S, S] from an unconditional ``model``.

    Builds a :class:`Denoiser` (one compile) per call; hold one and call :func:`generate` to reuse it.
    """
    denoiser = Denoiser(model, sched, clip_denoised, objective=objective)
    return generate(denoiser, (channels, image_size, image_size), batch_size, seed=seed,
                    batch_size=batch_size, sampler=sampler, steps=steps, progress=progress, **options)
