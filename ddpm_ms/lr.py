"""Learning-rate schedules: the tutorial's per-epoch cosine list, and the warm-up + cosine of budgeted runs.

A budgeted run (``train.minutes``) knows its length only after it has measured its speed, so its LR is computed
in the graph from Adam's global_step and two Parameters that the plan fills in (no recompile), the step P the
plan was made at and the planned total N:

    lr(s) = lr * (s + 1) / W                                  for s < W (the warm-up)
    lr(s) = lr                                                for W <= s < P (held while the speed is measured)
    lr(s) = min_lr + (lr - min_lr) (1 + cos(pi (s - P) / (N - P))) / 2     for P <= s < N

with s the 0-based step and W = train.warmup_steps (Loshchilov & Hutter 2017, eq. 5, after a warm-up and a
constant phase, as in warmup-stable-decay schedules). Until the plan P is "never": the LR holds at lr.
"""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

from .params import assign_parameters


HOLD = 2.0 ** 30       # decay_start before the plan: the LR holds at lr (exact in float32)


def warmup_cosine(step, lr, min_lr, warmup, total, decay_start=None):
    """The budgeted runs' LR at 0-based ``step`` (a scalar or an array), in float64 numpy; ``decay_start`` P
    (None: ``warmup``)."""
    s = np.asarray(step, np.float64)
    start = warmup if decay_start is None else decay_start
    frac = np.clip((s - start) / max(total - start, 1), 0.0, 1.0)
    cos = min_lr + (lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * frac))
    return np.where(s < warmup, lr * (s + 1) / warmup, cos)


class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
    """:func:`warmup_cosine` in the graph: ``lr_at(global_step)`` -> float32 scalar. ``set_plan(P, N)`` fixes the
    cosine's start P and the total N; until then P is :data:`HOLD` and the LR holds at ``lr``."""

    def __init__(self, lr, min_lr, warmup, total, decay_start=HOLD):
        super().__init__()
        self.lr, self.min_lr, self.warmup = float(lr), float(min_lr), float(warmup)
        self.total_steps = Parameter(Tensor(float(total), mstype.float32), name="ddpm_ms_lr_total_steps",
                                     requires_grad=False)
        # absent from checkpoints written before it existed: those keep the config's value (their cosine began at W)
        self.decay_start = Parameter(Tensor(float(decay_start), mstype.float32), name="ddpm_ms_lr_decay_start",
                                     requires_grad=False)

    def set_plan(self, decay_start, total):
        """Fix the cosine's start P and the schedule's length N (the plan), in place so the compiled step sees them
        (:mod:`ddpm_ms.params`)."""
        assign_parameters([(self.decay_start, np.float32(decay_start)), (self.total_steps, np.float32(total))])

    def total(self):
        """N as an int."""
        return int(self.total_steps.asnumpy())

    def numpy(self, step):
        """The LR at ``step`` as this schedule computes it, on the host (for logs)."""
        return float(warmup_cosine(step, self.lr, self.min_lr, self.warmup, self.total(),
                                   float(self.decay_start.asnumpy())))

    def construct(self, global_step):
        s = ops.cast(global_step, mstype.float32)
        warm = self.lr * (s + 1.0) / self.warmup
        frac = ops.clip_by_value((s - self.decay_start) / ops.maximum(self.total_steps - self.decay_start, 1.0),
                                 0.0, 1.0)
        cos = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + ops.cos(math.pi * frac))
        return ops.select(s < self.warmup, warm, cos)


def tutorial_cosine(lr, min_lr, epochs, steps_per_epoch):
    """The tutorial's per-step LR list: nn.cosine_decay_lr(min_lr, lr, epochs*steps, steps, epochs)."""
    return nn.cosine_decay_lr(min_lr=min_lr, max_lr=lr, total_step=epochs * steps_per_epoch,
                              step_per_epoch=steps_per_epoch, decay_epoch=epochs)
