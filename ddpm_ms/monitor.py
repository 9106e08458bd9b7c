"""What a run shows while it trains: sample grids from the model being trained, and their quality (FD, KID)."""
import time
from contextlib import nullcontext

import numpy as np

from .samplers import generate


class Previewer:
    """Samples from a model being trained: its EMA weights (if any), in inference mode, with one sampler.

    ``denoiser``: the :class:`~ddpm_ms.sampling.Denoiser` over ``model`` (its compiled graph is reused by every
    call); ``image_shape`` (C, H, W); ``sampler``/``steps``: a name in ``SAMPLERS`` and its network calls. A
    class-conditional model (``num_classes``) draws labels 0, 1, ... in turn with classifier-free ``guidance``;
    ``spacing`` of the timesteps; ``batch_size`` images per network call.
    """

    def __init__(self, model, denoiser, image_shape, sampler="ddpm", steps=None, guidance=1.0, num_classes=None,
                 ema=None, spacing="uniform", batch_size=64):
        self.model, self.denoiser, self.image_shape = model, denoiser, tuple(image_shape)
        self.sampler, self.steps, self.guidance, self.spacing = sampler, steps, guidance, spacing
        self.batch_size = batch_size
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
                return generate(self.denoiser, self.image_shape, num, seed=seed, batch_size=self.batch_size,
                                sampler=self.sampler, steps=self.steps, spacing=self.spacing,
                                labels=self.labels(num), guidance=self.guidance, callback=callback,
                                progress=progress)
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

    def estimate_seconds(self):
        """Seconds one call would take, from one batch of its sampling (timed after a first, compiling batch) and
        the scoring of those images, scaled to ``num``."""
        from .metrics import features  # pylint: disable=import-outside-toplevel  # (MindSpore)
        batch = min(self.num, self.previewer.batch_size)
        self.previewer(batch, seed=self.seed, progress=False)
        start = time.perf_counter()
        images = self.previewer(batch, seed=self.seed, progress=False)
        sample_s = time.perf_counter() - start
        start = time.perf_counter()
        features(self.evaluator.net, images)
        score_s = time.perf_counter() - start
        return (sample_s + score_s) * -(-self.num // batch)
