"""What a training loop does besides stepping, as callbacks: each one a few dozen lines, each one replaceable.

:class:`ddpm_ms.trainer.Trainer` calls, on every callback in its list and in order:

- ``on_fit_start(trainer)`` once, before the first step;
- ``on_resume(trainer, rows)`` after a resume, with the metrics rows kept;
- ``on_step(trainer, loss, finite)`` after each optimizer step (``loss`` a Tensor, ``finite`` a bool);
- ``on_log(trainer, row)`` when a metrics row is written, ``on_eval(trainer, row)`` when an evaluation is;
- ``on_epoch_end(trainer)`` after the last batch of an epoch;
- ``on_end(trainer, interrupted)`` once at the end (``interrupted``: the signal number, or None);
- ``on_close(trainer)`` always last, after ``on_end`` or an error.

A callback may return a value from ``on_end``; the trainer's summary keeps the one of :class:`CheckpointPolicy`.
To log elsewhere, subclass :class:`Callback`, override ``on_log``, and pass it in ``Trainer(callbacks=...)``
or append it to ``trainer.callbacks``.
"""
import math
import time

from tqdm.auto import tqdm

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

    def on_end(self, trainer, interrupted):
        """Once, at the end of ``fit``."""

    def on_close(self, trainer):
        """Always, last: after ``on_end``, or when ``fit`` stops on an error."""


class EMAUpdate(Callback):
    """theta_ema update every ``every`` optimizer steps (ema.update_every)."""

    def __init__(self, ema, every=1):
        self.ema, self.every = ema, every

    def on_step(self, trainer, loss, finite):
        if trainer.state.step % self.every == 0:
            self.ema.update()


class ProgressBar(Callback):
    """The tqdm bar: steps done of the run's total, loss, img/s and the FDs."""

    def __init__(self):
        self.bar, self.best_fd = None, math.inf

    def on_fit_start(self, trainer):
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.state.step, desc="train", unit="step",
                        disable=not trainer.progress)

    def on_step(self, trainer, loss, finite):
        self.bar.update(1)

    def on_log(self, trainer, row):
        best = {"best_fd": f"{self.best_fd:.1f}"} if math.isfinite(self.best_fd) else {}
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}", **best)

    def on_eval(self, trainer, row):
        self.best_fd = min(self.best_fd, row["fd"])
        self.bar.set_postfix(fd=f"{row['fd']:.1f}", best=f"{self.best_fd:.1f}", eval_s=f"{row['eval_s']:.0f}")

    def on_resume(self, trainer, rows):
        self.best_fd = min([r["fd"] for r in rows if "fd" in r], default=math.inf)

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()


class MetricsLog(Callback):
    """Every ``every`` steps (train.log_every) and at the last, a row {step, epoch, loss, lr, loss_scale,
    img_per_s, wall_s} in metrics.jsonl; then ``on_log`` for every callback."""

    def __init__(self, folder, every, lrs, loss_scaler):
        self.folder, self.every, self.lrs, self.loss_scaler = folder, every, lrs, loss_scaler
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
                               "lr": float(self.lrs[min(step, len(self.lrs)) - 1]),
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
        if trainer.state.epoch % self.every == 0:
            self.evaluate(trainer)

    def on_end(self, trainer, interrupted):
        step = trainer.state.step
        if interrupted is None and not any("fd" in r and r["step"] == step for r in self.folder.rows()):
            self.evaluate(trainer)


class BestCheckpoint(Callback):
    """best.ckpt: the full checkpoint of the evaluation with the lowest FD so far, never pruned.

    A new FD replaces the kept one only when it is lower by more than ``margin`` (the metric's noise; 0: any
    lower FD). ``best_fd`` survives resumes (read back from the metrics rows).
    """

    def __init__(self, folder, margin=0.0):
        self.folder, self.margin, self.best_fd = folder, margin, math.inf

    def on_resume(self, trainer, rows):
        self.best_fd = min([r["fd"] for r in rows if "fd" in r], default=math.inf)

    def on_eval(self, trainer, row):
        if row["fd"] < self.best_fd - self.margin:
            self.best_fd = row["fd"]
            self.folder.save_checkpoint(trainer.state, name=BEST)
        tqdm.write(f"eval at step {row['step']}: FD {row['fd']:.2f}, KID {row['kid']:.4f} on {row['eval_num']} "
                   f"samples (best FD {self.best_fd:.2f}); took {row['eval_s']:.1f} s")


class PreviewGrids(Callback):
    """samples_epochNNN.png after each epoch; at the end samples_final.png/.npy and denoising.gif.

    ``previewer``: a :class:`~ddpm_ms.monitor.Previewer`; ``num`` images per grid (train.sample_num).
    """

    def __init__(self, previewer, folder, num, gif=True):
        self.previewer, self.folder, self.num, self.gif = previewer, folder, num, gif

    def on_epoch_end(self, trainer):
        s = trainer.state
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
