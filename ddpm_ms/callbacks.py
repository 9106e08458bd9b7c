"""What a training loop does besides stepping, as callbacks: each one a few dozen lines, each one replaceable.

:class:`ddpm_ms.trainer.Trainer` calls, on every callback in its list and in order:

- ``on_fit_start(trainer)`` once, before the first step;
- ``on_resume(trainer, rows)`` after a resume, with the metrics rows kept;
- ``on_step(trainer, loss, finite)`` after each optimizer step (``loss`` a Tensor, ``finite`` a bool);
- ``on_log(trainer, row)`` when a metrics row is written, ``on_eval(trainer, row)`` when an evaluation is;
- ``on_epoch_end(trainer)`` after the last batch of an epoch;
- ``on_plan(trainer, plan)`` when a budgeted run fixes its :class:`~ddpm_ms.budget.Plan` (a re-plan changes it, a
  resume restores it);
- ``on_end(trainer, interrupted)`` once at the end (``interrupted``: the signal number, or None);
- ``on_close(trainer)`` always last, after ``on_end`` or an error.

A callback may return a value from ``on_end``; the trainer's summary keeps the one of :class:`CheckpointPolicy`.
To log elsewhere, subclass :class:`Callback`, override ``on_log``, and pass it in ``Trainer(callbacks=...)``
or append it to ``trainer.callbacks``.
"""
import math
import time

from tqdm.auto import tqdm

from . import budget
from .errors import TrainingDiverged
from .paths import save_npy
from .run_folder import BEST
from .samplers import Recorder
from .viz import save_gif, save_grid


class Callback:
    """A hook set that does nothing; subclasses override what they need."""

    def on_fit_start(self, trainer):
        """Before the first step of ``fit``."""

    def on_resume(self, trainer, rows):
        """After a resume; ``rows``: the metrics rows kept (rank 0), else []."""

    def on_step(self, trainer, loss, finite):
        """After each optimizer step."""

    def on_log(self, trainer, row):
        """After a metrics row is written."""

    def on_eval(self, trainer, row):
        """After an evaluation row is written."""

    def on_epoch_end(self, trainer):
        """After the last batch of an epoch (the epoch counter is already advanced)."""

    def on_plan(self, trainer, plan):
        """When a budgeted run's plan is fixed: ``plan`` a :class:`~ddpm_ms.budget.Plan`."""

    def on_end(self, trainer, interrupted):
        """Once, at the end of ``fit``."""

    def on_close(self, trainer):
        """Always, last: after ``on_end``, or when ``fit`` stops on an error."""


class PeerFinish(Callback):
    """Under msrun: once every step is done (not after a signal), tell the other ranks through ``watch`` (a
    :class:`~ddpm_ms.distributed.PeerWatch`) that this rank's exit is not a death."""

    def __init__(self, watch):
        self.watch = watch

    def on_end(self, trainer, interrupted):
        if interrupted is None:
            self.watch.finish()


class EMAUpdate(Callback):
    """theta_ema update every ``every`` optimizer steps (ema.update_every)."""

    def __init__(self, ema, every=1):
        self.ema, self.every = ema, every

    def on_step(self, trainer, loss, finite):
        if trainer.state.step % self.every == 0:
            self.ema.update()


class ProgressBar(Callback):
    """The tqdm bar: steps done of the run's total, loss, img/s and the FDs; with a budget (``budget_s``) the
    minutes it has and the time left."""

    def __init__(self, budget_s=None):
        self.bar, self.best_fd, self.budget_s = None, math.inf, budget_s

    def on_fit_start(self, trainer):
        desc = "train" if self.budget_s is None else f"train ({self.budget_s / 60:g} min budget)"
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.state.step, desc=desc, unit="step",
                        disable=not trainer.progress)

    def on_step(self, trainer, loss, finite):
        self.bar.update(1)

    def _left(self, trainer):
        if self.budget_s is None:
            return {}
        left = max(0.0, self.budget_s - trainer.wall_s)
        return {"left": f"{int(left // 60)}:{int(left % 60):02d}"}

    def on_plan(self, trainer, plan):
        if self.bar is not None:         # (a resume restores the plan before the bar exists)
            self.bar.total = plan.total_steps
            self.bar.refresh()

    def on_log(self, trainer, row):
        best = {"best_fd": f"{self.best_fd:.1f}"} if math.isfinite(self.best_fd) else {}
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}", **best, **self._left(trainer))

    def on_eval(self, trainer, row):
        self.best_fd = min(self.best_fd, row["fd"])
        self.bar.set_postfix(fd=f"{row['fd']:.1f}", best=f"{self.best_fd:.1f}", eval_s=f"{row['eval_s']:.0f}",
                             **self._left(trainer))

    def on_resume(self, trainer, rows):
        self.best_fd = min([r["fd"] for r in rows if "fd" in r], default=math.inf)

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()


class MetricsLog(Callback):
    """Every ``every`` steps (train.log_every) and at the last, a row {step, epoch, loss, lr, loss_scale,
    img_per_s, wall_s} in metrics.jsonl; then ``on_log`` for every callback. ``lr_at(s)``: the LR of 0-based
    step s."""

    def __init__(self, folder, every, lr_at, loss_scaler):
        self.folder, self.every, self.lr_at, self.loss_scaler = folder, every, lr_at, loss_scaler
        self._tick = None   # (time, step) of the last row, for img/s

    def on_fit_start(self, trainer):
        self._tick = (time.time(), trainer.state.step)

    def on_step(self, trainer, loss, finite):
        step = trainer.state.step
        if step % self.every and step != trainer.total_steps:
            return
        now = time.time()
        rate = (step - self._tick[1]) * trainer.global_batch / max(now - self._tick[0], 1e-9)
        row = self.folder.log({"step": step, "epoch": trainer.state.epoch, "loss": float(loss.asnumpy()),
                               "lr": self.lr_at(step - 1),
                               "loss_scale": float(self.loss_scaler.scale_value.asnumpy()),
                               "img_per_s": rate, "wall_s": trainer.wall_s})
        self._tick = (now, step)
        trainer.emit("on_log", row)


class DivergenceStop(Callback):
    """TrainingDiverged after ``limit`` steps in a row with inf/nan gradients (train.max_nonfinite_steps)."""

    def __init__(self, limit, folder):
        self.limit, self.folder, self.nonfinite = limit, folder, 0

    def on_step(self, trainer, loss, finite):
        self.nonfinite = 0 if finite else self.nonfinite + 1
        if self.nonfinite < self.limit:
            return
        step, kept = trainer.state.step, self.folder.last_checkpoint or "none written yet"
        raise TrainingDiverged(f"training diverged: the gradients were inf/nan for {self.limit} steps in a row, "
                               f"steps {step - self.limit + 1}..{step} (train.max_nonfinite_steps); "
                               f"last good checkpoint: {kept}; try a lower train.lr")


class CheckpointPolicy(Callback):
    """A checkpoint every ``every`` steps (train.ckpt_every), written at the first finite step once due, and one
    at the end; the folder keeps the last K. ``on_end`` returns the last path."""

    def __init__(self, folder, every):
        self.folder, self.every, self.due = folder, every, False

    def on_step(self, trainer, loss, finite):
        self.due = self.due or trainer.state.step % self.every == 0
        if self.due and finite:
            self.folder.save_checkpoint(trainer.state)
            self.due = False

    def on_end(self, trainer, interrupted):
        return self.folder.save_checkpoint(trainer.state)


class Evaluation(Callback):
    """FD/KID of the model being trained every ``every`` epochs (train.eval_every) and at the end; each row goes
    to metrics.jsonl and then to ``on_eval``. ``probe``: a :class:`~ddpm_ms.monitor.QualityProbe`."""

    def __init__(self, probe, folder, every):
        self.probe, self.folder, self.every = probe, folder, every

    def evaluate(self, trainer):
        """Score now, log the row and tell the callbacks; returns the row."""
        s = trainer.state
        row = self.folder.log({"step": s.step, "epoch": s.epoch, **self.probe(trainer.progress),
                               "wall_s": trainer.wall_s})
        trainer.emit("on_eval", row)
        return row

    def on_epoch_end(self, trainer):
        if trainer.state.epoch % self.every == 0 and trainer.total_steps is not None:   # None: not planned yet
            self.evaluate(trainer)

    def on_plan(self, trainer, plan):
        self.every = plan.eval_every

    def on_end(self, trainer, interrupted):
        step = trainer.state.step
        if interrupted is None and not any("fd" in r and r["step"] == step for r in self.folder.rows()):
            self.evaluate(trainer)


class BestCheckpoint(Callback):
    """best.ckpt: the full checkpoint of the evaluation with the lowest FD so far, never pruned.

    A new FD replaces the kept one only when it is lower by more than the fraction ``margin`` of it
    (train.best_margin, the metric's relative noise, BENCHMARKS.md; 0: any lower FD), so that the noise of one
    evaluation cannot pick the checkpoint. ``best_fd`` survives resumes (read back from the metrics rows).
    """

    def __init__(self, folder, margin=0.0):
        self.folder, self.margin, self.best_fd = folder, margin, math.inf

    def on_resume(self, trainer, rows):
        self.best_fd = min([r["fd"] for r in rows if "fd" in r], default=math.inf)

    def on_eval(self, trainer, row):
        if row["fd"] < self.best_fd * (1.0 - self.margin):
            self.best_fd = row["fd"]
            self.folder.save_checkpoint(trainer.state, name=BEST)
        tqdm.write(f"eval at step {row['step']}: FD {row['fd']:.2f}, KID {row['kid']:.4f} on {row['eval_num']} "
                   f"samples (best FD {self.best_fd:.2f}); took {row['eval_s']:.1f} s")


class PreviewGrids(Callback):
    """samples_epochNNN.png every ``every`` epochs (train.preview_every); at the end samples_final.png/.npy and
    denoising.gif. ``previewer``: a :class:`~ddpm_ms.monitor.Previewer`; ``num`` images per grid (train.sample_num).
    """

    def __init__(self, previewer, folder, num, gif=True, every=1):
        self.previewer, self.folder, self.num, self.gif, self.every = previewer, folder, num, gif, every

    def on_plan(self, trainer, plan):
        self.every = plan.preview_every

    def on_epoch_end(self, trainer):
        s = trainer.state
        if s.epoch % self.every or trainer.total_steps is None:     # None: a budget not planned yet
            return
        grid = self.previewer(self.num, seed=s.epoch, progress=trainer.progress)
        save_grid(grid, self.folder.file(f"samples_epoch{s.epoch:03d}.png"), nrow=self.previewer.columns,
                  title=f"epoch {s.epoch}, step {s.step}")

    def on_end(self, trainer, interrupted):
        if interrupted is not None:
            return
        recorder = Recorder(("x",))
        final = self.previewer(self.num, seed=12345, callback=recorder, progress=trainer.progress)
        save_grid(final, self.folder.file("samples_final.png"), nrow=self.previewer.columns,
                  title=f"step {trainer.state.step}")
        save_npy(self.folder.file("samples_final.npy"), final)
        if self.gif:
            frames = recorder.stack("x")
            save_gif(frames, self.folder.file("denoising.gif"), index=0, every=max(1, len(frames) // 100))


class Curves(Callback):
    """loss_curve.png and fd_curve.png from metrics.jsonl at the end."""

    def __init__(self, folder):
        self.folder = folder

    def on_end(self, trainer, interrupted):
        self.folder.plot_curves()


class Budget(Callback):
    """Sizes a run by wall time (train.minutes): times the steps from the start until ``measure_share`` of
    ``budget_s`` has passed (and the ``warmup_steps`` are done; the LR holds at its peak after them), then a
    grid, the evaluation's sampling and a checkpoint, and fixes the :class:`~ddpm_ms.budget.Plan` that fits the
    budget (see :mod:`ddpm_ms.budget`). Before the plan no grids or evaluations run. The plan goes into the
    config (train.max_steps, decay_start, eval_every, preview_every, earlier_plans), config.yaml, a metrics row,
    the LR schedule (``lr_schedule.set_plan``) and every later checkpoint; each callback hears it through
    ``on_plan``. Every ``replan_every`` of the budget after that (up to :data:`~ddpm_ms.budget.LAST_REPLAN`) it
    times the recent steps and re-plans if the plan would miss the budget (:func:`~ddpm_ms.budget.replan`),
    recorded the same way. A resume from a checkpoint written after the plan continues the plan as that
    checkpoint has it, and does not re-plan (its clock started again). It runs first among the callbacks, so the
    others see the planned total at the same step.
    """

    def __init__(self, budget_s, warmup_steps, lr_schedule, monitor_share=0.05, measure_share=0.0,
                 replan_every=0.0):
        self.budget_s, self.warmup, self.lr_schedule = budget_s, warmup_steps, lr_schedule
        self.monitor_share = monitor_share
        self.measure_s, self.replan_s = measure_share * budget_s, replan_every * budget_s
        self.stamps, self.plan, self.costs = [], None, None     # costs: the measured budget.Costs
        self.resumed, self.next_check = False, math.inf

    def on_resume(self, trainer, rows):
        saved = trainer.resumed_config.train
        if saved.max_steps is not None and saved.minutes is not None:
            start = saved.decay_start if saved.decay_start is not None else saved.warmup_steps   # older plans: W
            self.resumed = True
            self._fix(trainer, budget.Plan(saved.max_steps, saved.eval_every, saved.preview_every, None, start,
                                           tuple(saved.earlier_plans)), log=False)

    def on_step(self, trainer, loss, finite):
        if self.resumed or (self.plan is not None and self.next_check == math.inf):   # nothing left to time
            return
        self.stamps.append(time.perf_counter())
        if self.plan is None:
            if trainer.state.step >= self.warmup and trainer.wall_s >= self.measure_s:
                self._fix(trainer, self._measure_and_plan(trainer))
                self.stamps, self.next_check = [], trainer.wall_s + self.replan_s if self.replan_s else math.inf
        elif trainer.wall_s >= self.next_check:
            self.next_check += self.replan_s
            if trainer.wall_s > budget.LAST_REPLAN * self.budget_s:
                self.next_check = math.inf
                return
            if len(self.stamps) < 8:            # too few steps since the last check to time
                return
            new, costs = budget.replan(self.plan, self.budget_s, trainer.wall_s, trainer.state.step,
                                       trainer.batches.steps_per_epoch, self.costs, self.step_seconds(),
                                       trainer.config.train.ckpt_every,
                                       evaluate=trainer.callback(Evaluation) is not None)
            self.stamps = []
            if new is not None:
                self.costs = costs
                self._fix(trainer, new, what="replan")

    def step_seconds(self):
        """Seconds per step: the mean over the second half of the steps timed (the compile and the first, slower
        steps left out: in the 15-minute recipe steps 50-200 ran 5% slower than the run's average; on a machine
        whose speed drifts, the recent half is the better guess), without the slowest 2% (an epoch end's shuffle,
        a grid, an evaluation, and the like)."""
        half = self.stamps[len(self.stamps) // 2:]
        gaps = sorted(b - a for a, b in zip(half, half[1:]))
        gaps = gaps[:len(gaps) - math.ceil(0.02 * len(gaps))] or gaps
        return sum(gaps) / len(gaps)

    def _measure_and_plan(self, trainer):
        step_s = self.step_seconds()
        grids, evaluation = trainer.callback(PreviewGrids), trainer.callback(Evaluation)
        preview_s = _timed_twice(lambda: grids.previewer(grids.num, seed=0, progress=False)) if grids else 0.0
        eval_s = evaluation.probe.estimate_seconds() if evaluation else 0.0
        start = time.perf_counter()
        trainer.save()
        costs = budget.Costs(step_s, preview_s, eval_s, time.perf_counter() - start)
        self.costs = costs
        return budget.plan(self.budget_s, trainer.wall_s, trainer.state.step, trainer.batches.steps_per_epoch,
                           costs, trainer.config.train.ckpt_every, evaluate=evaluation is not None,
                           monitor_share=self.monitor_share)

    def _fix(self, trainer, plan, log=True, what="plan"):
        self.plan = plan
        t = trainer.config.train
        t.max_steps, t.eval_every, t.preview_every = plan.total_steps, plan.eval_every, plan.preview_every
        t.decay_start, t.earlier_plans = plan.decay_start, plan.earlier
        trainer.total_steps = plan.total_steps
        self.lr_schedule.set_plan(plan.decay_start, plan.total_steps, plan.earlier, step=trainer.state.step)
        trainer.emit("on_plan", plan)
        if log:
            trainer.folder.log({"step": trainer.state.step, "epoch": trainer.state.epoch, what: plan.to_dict(),
                                "costs": vars(self.costs), "budget_s": self.budget_s, "wall_s": trainer.wall_s})
            trainer.config.dump(trainer.folder.file("config.yaml"))
            trainer.save()          # the plan is durable: a resume from here on continues it
            tqdm.write(f"{what}: {plan.total_steps} steps in {self.budget_s / 60:g} min (predicted "
                       f"{plan.predicted_s:.0f} s; {self.costs.step_s * 1000:.1f} ms/step, grid "
                       f"{self.costs.preview_s:.1f} s, evaluation {self.costs.eval_s:.1f} s); "
                       f"{_cadence('evaluations', plan.eval_every)}, {_cadence('grids', plan.preview_every)}")


class LrSegments(Callback):
    """A replayed run's re-plans (train.earlier_plans, with train.max_steps): at each recorded until_step the LR
    schedule's graph switches to the next plan's cosine, as the run that re-planned did
    (:func:`ddpm_ms.lr.segment_at`). ``plan``: (decay_start, total, earlier_plans)."""

    def __init__(self, lr_schedule, *plan):
        self.lr_schedule, self.plan = lr_schedule, plan
        self.switch_steps = {int(until) for until, _, _ in plan[2]}

    def on_resume(self, trainer, rows):
        self.lr_schedule.set_plan(*self.plan, step=trainer.state.step)

    def on_step(self, trainer, loss, finite):
        if trainer.state.step in self.switch_steps:
            self.lr_schedule.set_plan(*self.plan, step=trainer.state.step)


def _cadence(what, every):
    return f"{what} every {every} epochs" if every else f"no {what}"


def _timed_twice(fn):
    """Seconds of the second of two calls of ``fn`` (the first compiles)."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
