"""What a run shows while it trains: sample grids from the model being trained, and their quality (FD, KID)."""
import time
from contextlib import nullcontext

import numpy as np

from .samplers import generate


class Previewer:
    """Samples from a model being trained: its EMA weights (if any), in inference mode, with one sampler.

    ``denoiser``: the :class:`~ddpm_ms.sampling.Denoiser` over ``model`` (its compiled graph is reused by every
    call); ``image_shape`` (C, H, W); ``sampler``/``steps``: a name in ``SAMPLERS`` and its network calls. A
    class-conditional model (``num_classes``) draws labels 0, 1, ... in turn with classifier-free ``guidance``.
    """

    def __init__(self, model, denoiser, image_shape, sampler="ddpm", steps=None, guidance=1.0, num_classes=None,
                 ema=None):
        self.model, self.denoiser, self.image_shape = model, denoiser, tuple(image_shape)
        self.sampler, self.steps, self.guidance = sampler, steps, guidance
        self.num_classes, self.ema = num_classes, ema

    @property
    def columns(self):
        """Columns of a sample grid: one per class for a conditional model, else 8."""
        return self.num_classes or 8

    def labels(self, num):
        """The labels [num] of ``num`` samples (None for an unconditional model)."""
        return None if self.num_classes is None else np.arange(num) % self.num_classes

    def __call__(self, num, seed=0, callback=None, progress=True):
        """``num`` images [num, C, H, W] float32; ``callback`` sees every sampler step (see ``generate``).

        The model is back in training mode, with its own weights, afterwards.
        """
        self.model.set_train(False)
        try:
            with self.ema.swapped() if self.ema is not None else nullcontext():
                return generate(self.denoiser, self.image_shape, num, seed=seed, sampler=self.sampler,
                                steps=self.steps, labels=self.labels(num), guidance=self.guidance,
                                callback=callback, progress=progress)
        finally:
            self.model.set_train(True)


class QualityProbe:
    """FD and KID of ``num`` samples from a :class:`Previewer` against the metric's reference set.

    ``evaluator``: a :class:`ddpm_ms.metrics.Evaluator`. The samples use a fixed ``seed``, so the numbers of two
    evaluations differ only by the weights. Sampling draws from its own numpy generator and restores the
    weights and mode, so it changes nothing the training steps see.
    """

    def __init__(self, previewer, evaluator, num=1000, seed=2024):
        self.previewer, self.evaluator, self.num, self.seed = previewer, evaluator, num, seed

    def __call__(self, progress=True):
        """{"fd", "kid", "classes_present", "eval_num", "eval_s"}: the scores and the seconds they took."""
        start = time.time()
        images = self.previewer(self.num, seed=self.seed, progress=progress)
        scores = self.evaluator.evaluate(images, num=self.num, labels=self.previewer.labels(self.num))
        return {"fd": scores["fd"], "kid": scores["kid"], "classes_present": scores["classes_present"],
                "eval_num": self.num, "eval_s": round(time.time() - start, 2)}
