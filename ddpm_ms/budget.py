"""Runs sized by wall time: how many steps fit a budget on this machine, from the run's own measured costs.

A budgeted run (``train.minutes``) trains with the LR warming up over ``train.warmup_steps`` steps and then held,
timing its steps, until ``train.measure_share`` of the budget has passed (a machine's speed can move by 10% in its
first minutes); then it times one sample grid, one batch of the evaluation's sampling and one checkpoint
(:class:`Costs`). :func:`plan` turns those into the step count and the cadence of evaluations and grids that fill
the budget, counting what is already spent (from the process start: imports, data, compiles) and what is still to
come (the final evaluation, grid, GIF and checkpoint). The plan is then fixed: written into the config
(``train.max_steps``, ``decay_start``, ``eval_every``, ``preview_every``), config.yaml and every checkpoint, so a
resume continues it and another machine replays it.

A machine's speed can also move later (one two-core run slowed from 81 to 103 ms per step after its plan), so
every ``train.replan_every`` of the budget, up to :data:`LAST_REPLAN` of it, the run times its recent steps again
and, if the plan would now miss the budget by more than :data:`REPLAN_TOLERANCE` of it, re-plans
(:func:`replan`): a new total from the new speed (the other costs scaled with it), the same cadence, and the LR's
cosine spread over the new steps (:func:`replanned_start`). The plans it replaced are recorded
(``train.earlier_plans``), so a replay follows them step for step. Nothing here imports MindSpore.
"""
import math
import os
import time
from dataclasses import asdict, dataclass

FINAL_EXTRA_S = 4.0     # after the last step, beyond the measured costs: GIF frames, curves, process exit
LAST_REPLAN = 0.9       # no re-plan after this share of the budget (the LR's cosine would bend too late)
REPLAN_TOLERANCE = 0.01  # re-plan only when the plan would miss the budget by more than this share of it
_IMPORTED = time.time()


def process_start_time():
    """Unix time this process started (Linux: /proc), so a budget counts interpreter start-up and imports; else
    the time this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])          # field 22: starttime, in clock ticks
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


@dataclass
class Costs:
    """Seconds measured on this machine: a training step (loop included), a sample grid, one evaluation (its
    sampling and scoring), one checkpoint write."""
    step_s: float
    preview_s: float
    eval_s: float
    ckpt_s: float


@dataclass
class Plan:
    """A budgeted run's fixed plan: ``total_steps``; evaluations every ``eval_every`` epochs (past the run's
    epochs: only the last one; 0: none) and grids every ``preview_every`` epochs; ``predicted_s``, the run's
    predicted wall time; ``decay_start``, the LR cosine's start P (the step the first plan was made at; after a
    re-plan, :func:`replanned_start`); ``earlier``: the (until_step, P, N) of the plans re-plans replaced."""
    total_steps: int
    eval_every: int
    preview_every: int
    predicted_s: float
    decay_start: float
    earlier: tuple = ()

    def to_dict(self):
        """JSON-ready."""
        return asdict(self)


def _count(done, total, every):
    """Multiples of ``every`` in (done, total]."""
    return total // every - done // every


def predicted_seconds(total, elapsed_s, done, steps_per_epoch, costs, ckpt_every, eval_every, preview_every,
                      evaluate=True):
    """Wall seconds of a run to ``total`` steps, ``elapsed_s`` of it spent at step ``done``: the steps left, the
    grids and evaluations at the epoch ends they fall on, the checkpoints, and the end (a last evaluation, the
    final grid, a checkpoint and :data:`FINAL_EXTRA_S`)."""
    epoch_ends = lambda every: _count(done // steps_per_epoch, total // steps_per_epoch, every)  # noqa: E731
    evals = (epoch_ends(eval_every) if eval_every else 0) + 1 if evaluate else 0
    return (elapsed_s + (total - done) * costs.step_s + epoch_ends(preview_every) * costs.preview_s
            + evals * costs.eval_s + (_count(done, total, ckpt_every) + 1) * costs.ckpt_s
            + costs.preview_s + FINAL_EXTRA_S)


def plan(budget_s, elapsed_s, done, steps_per_epoch, costs, ckpt_every, evaluate=True, monitor_share=0.05,
         max_previews=10, max_evals=4):
    """The :class:`Plan` that fits ``budget_s`` seconds, ``elapsed_s`` of them spent at step ``done``.

    Grids (at most ``max_previews``) and evaluations (``evaluate``: a last one always, then up to ``max_evals``
    in all, evenly spaced) share ``monitor_share`` of the budget; the steps get the rest. The total is the
    largest step count whose :func:`predicted_seconds` fits the budget, and at least ``done``.
    """
    train_s = budget_s - elapsed_s - costs.preview_s - FINAL_EXTRA_S - costs.ckpt_s - (costs.eval_s if evaluate else 0)
    rough_epochs = max(1.0, (done + max(train_s, 0.0) / costs.step_s) / steps_per_epoch)
    share = monitor_share * budget_s - (costs.eval_s if evaluate else 0.0)
    previews = int(min(max_previews, rough_epochs, max(share, 0.0) / max(costs.preview_s, 1e-9)))
    preview_every = max(1, math.ceil(rough_epochs / max(previews, 1)))
    share -= (rough_epochs // preview_every) * costs.preview_s
    mid_evals = int(min(max_evals - 1, max(share, 0.0) / max(costs.eval_s, 1e-9))) if evaluate else 0
    eval_every = math.ceil(rough_epochs / (mid_evals + 1)) if mid_evals else 0
    if evaluate and (not eval_every or eval_every >= rough_epochs):
        eval_every = math.ceil(rough_epochs) + 1          # past the last epoch: only the last evaluation

    args = (elapsed_s, done, steps_per_epoch, costs, ckpt_every, eval_every, preview_every, evaluate)
    total = fit_total(budget_s, *args)
    return Plan(total, eval_every, preview_every, round(predicted_seconds(total, *args), 1), done)


def fit_total(budget_s, elapsed_s, done, steps_per_epoch, costs, ckpt_every, eval_every, preview_every,
              evaluate=True):
    """The largest total (at least ``done``) whose :func:`predicted_seconds` fits ``budget_s``."""
    def fits(total):
        return predicted_seconds(total, elapsed_s, done, steps_per_epoch, costs, ckpt_every, eval_every,
                                 preview_every, evaluate) <= budget_s

    lo, hi = done, done + 1
    while fits(hi):
        hi = done + 2 * (hi - done)
    while hi - lo > 1:              # predicted_seconds grows with total
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def replanned_start(step, decay_start, total, new_total):
    """P' for a re-plan at ``step`` R from (P, N) to N': the cosine's progress f at R is kept, P' = (R - f N') / (1 - f)
    (f = 0, before the decay: P' = P; f < 1 is needed)."""
    f = min(max((step - decay_start) / max(total - decay_start, 1), 0.0), 1.0)
    if f >= 1.0:
        raise ValueError(f"a re-plan at step {step} comes after the plan's end at {total}")
    return decay_start if f == 0.0 else (step - f * new_total) / (1.0 - f)


def replan(old, budget_s, elapsed_s, done, steps_per_epoch, old_costs, step_s, ckpt_every, evaluate=True):
    """The re-plan of :class:`Plan` ``old`` at step ``done``, ``elapsed_s`` into the budget, now that a step takes
    ``step_s`` (the other costs of ``old_costs`` scaled by the same ratio): None when ``old`` still lands within
    :data:`REPLAN_TOLERANCE` of ``budget_s``; else the Plan with the total that fits, ``old``'s cadence, the LR's
    cosine spread over the new steps, and ``old`` added to ``earlier``. Returns (plan or None, scaled costs)."""
    r = step_s / old_costs.step_s
    costs = Costs(step_s, old_costs.preview_s * r, old_costs.eval_s * r, old_costs.ckpt_s * r)
    args = (elapsed_s, done, steps_per_epoch, costs, ckpt_every, old.eval_every, old.preview_every, evaluate)
    if abs(predicted_seconds(old.total_steps, *args) - budget_s) <= REPLAN_TOLERANCE * budget_s \
            or done >= old.total_steps:
        return None, costs
    total = max(fit_total(budget_s, *args), done + 1)
    start = replanned_start(done, old.decay_start, old.total_steps, total)
    return Plan(total, old.eval_every, old.preview_every, round(predicted_seconds(total, *args), 1), start,
                old.earlier + ((done, old.decay_start, old.total_steps),)), costs
