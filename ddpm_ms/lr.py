"""Learning-rate schedules: the tutorial's per-epoch cosine list, and the warm-up + cosine of budgeted runs.

A budgeted run (``train.minutes``) knows its length only after it has measured its speed, so its LR is computed
in the graph from Adam's global_step and two Parameters that the plan fills in (no recompile), the step P the
plan was made at and the planned total N:

    lr(s) = lr * (s + 1) / W                                  for s < W (the warm-up)
    lr(s) = lr                                                for W <= s < P (held while the speed is measured)
    lr(s) = min_lr + (lr - min_lr) (1 + cos(pi (s - P) / (N - P))) / 2     for P <= s < N

with s the 0-based step and W = train.warmup_steps (Loshchilov & Hutter 2017, eq. 5, after a warm-up and a
constant phase, as in warmup-stable-decay schedules). Until the plan P is "never": the LR holds at lr.

A re-plan at step R to a new total N' (the machine's speed moved) keeps the cosine's progress f = (R - P) / (N - P)
and spreads what is left of it over the new steps: P' = (R - f N') / (1 - f)
(:func:`ddpm_ms.budget.replanned_start`), so the LR is continuous at R and reaches min_lr at N'. The plans a
re-plan replaced are kept as ``earlier`` segments (until_step, P, N), each in force for the steps before its
until_step (:func:`segment_at`).
"""
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype

from .params import assign_parameters


HOLD = 2.0 ** 30       # decay_start before the plan: the LR holds at lr (exact in float32)


def segment_at(step, decay_start, total, earlier=()):
    """The (P, N) in force at 0-based ``step``: the first of the ``earlier`` segments (until_step, P, N), in
    increasing until_step, with ``step < until_step``; else the last plan's (``decay_start``, ``total``)."""
    for until, start, n in earlier:
        if step < until:
            return start, n
    return decay_start, total


def warmup_cosine(step, lr, min_lr, warmup, total, decay_start=None, earlier=()):
    """The budgeted runs' LR at 0-based ``step`` (a scalar or an array), in float64 numpy; ``decay_start`` P
    (None: ``warmup``); ``earlier``: the segments of replaced plans (:func:`segment_at`)."""
    s = np.asarray(step, np.float64)
    start = np.full(s.shape, warmup if decay_start is None else decay_start, np.float64)
    n = np.full(s.shape, total, np.float64)
    for until, p, m in reversed(tuple(earlier)):        # the first segment whose until_step is past s wins
        start, n = np.where(s < until, p, start), np.where(s < until, m, n)
    frac = np.clip((s - start) / np.maximum(n - start, 1), 0.0, 1.0)
    cos = min_lr + (lr - min_lr) * 0.5 * (1.0 + np.cos(math.pi * frac))
    return np.where(s < warmup, lr * (s + 1) / warmup, cos)


class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
    """:func:`warmup_cosine` in the graph: ``lr_at(global_step)`` -> float32 scalar. ``set_plan(P, N, earlier,
    step)`` fixes the plan; the graph's two Parameters hold the (P, N) in force at ``step`` (:func:`segment_at`);
    until a plan P is :data:`HOLD` and the LR holds at ``lr``."""

    def __init__(self, lr, min_lr, warmup, total, decay_start=HOLD, earlier=()):
        super().__init__()
        self.lr, self.min_lr, self.warmup = float(lr), float(min_lr), float(warmup)
        self.plan = (float(decay_start), int(total), tuple(earlier))      # the whole plan, on the host
        start, n = segment_at(0, *self.plan)
        self.total_steps = Parameter(Tensor(float(n), mstype.float32), name="ddpm_ms_lr_total_steps",
                                     requires_grad=False)
        # absent from checkpoints written before it existed: those keep the config's value (their cosine began at W)
        self.decay_start = Parameter(Tensor(float(start), mstype.float32), name="ddpm_ms_lr_decay_start",
                                     requires_grad=False)

    def set_plan(self, decay_start, total, earlier=(), step=0):
        """Fix the plan: the cosine's start P, the length N, the ``earlier`` segments; the Parameters get the
        segment in force at 0-based ``step``, in place so the compiled step sees them (:mod:`ddpm_ms.params`)."""
        self.plan = (float(decay_start), int(total), tuple(earlier))
        start, n = segment_at(step, *self.plan)
        assign_parameters([(self.decay_start, np.float32(start)), (self.total_steps, np.float32(n))])

    def numpy(self, step):
        """The LR at ``step`` as the plan gives it, on the host (for logs)."""
        start, n, earlier = self.plan
        return float(warmup_cosine(step, self.lr, self.min_lr, self.warmup, n, start, earlier))

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
