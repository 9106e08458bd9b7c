"""The training loop: :class:`Trainer` steps a compiled train step over a batch source and calls its callbacks.

    trainer = Trainer.from_config(cfg)          # or Trainer.from_config(cfg, resume="latest")
    summary = trainer.fit()

Everything but stepping (logging, checkpoints, previews, evaluations, best.ckpt, the divergence stop, the bar)
is a :mod:`ddpm_ms.callbacks` callback; :mod:`ddpm_ms.build` turns a config into the parts.
"""
import signal
import sys
import time
from contextlib import contextmanager

from tqdm.auto import tqdm

from . import build
from . import checkpoint as ckpt
from .callbacks import BestCheckpoint, CheckpointPolicy, PreviewGrids
from .errors import TrainingDiverged

__all__ = ["Trainer", "TrainingDiverged", "stop_on_signals"]


@contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Yield a dict whose 'signal' is set when SIGINT/SIGTERM arrives, instead of dying mid-step."""
    state = {"signal": None}

    def handler(signum, _frame):
        state["signal"] = signum

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Trainer:
    """Runs a training run's steps to ``total_steps``, calling ``callbacks`` (see :mod:`ddpm_ms.callbacks`).

    ``run``: a :class:`~ddpm_ms.build.Run` (model, schedule, optimizer, loss scaler, compiled ``train_step``, LRs,
    EMA); ``state``: its :class:`~ddpm_ms.checkpoint.TrainingState` (what checkpoints hold, position included);
    ``batches``: a :class:`~ddpm_ms.batches.BatchSource`; ``folder``: the :class:`~ddpm_ms.run_folder.RunFolder`;
    ``total_steps``: None in a budgeted run until its :class:`~ddpm_ms.callbacks.Budget` callback plans it.
    Under msrun (``world_size`` > 1) every rank trains on its shard; only rank 0 gets the callbacks that write.
    """

    def __init__(self, run, state, batches, folder, total_steps, callbacks=(), rank=0, world_size=1, start_time=None):
        self.run, self.state, self.batches, self.folder = run, state, batches, folder
        self.total_steps, self.callbacks = total_steps, list(callbacks)
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.progress = True            # progress bars (fit(progress=False) turns them off, sampling's too)
        self.resumed_config = None      # the Config stored in the checkpoint a resume started from
        self._wall = (time.time() if start_time is None else start_time, 0.0)   # (start, seconds before it)

    @classmethod
    def from_config(cls, cfg, resume=None, rank=0, world_size=1, overwrite=False, start_time=None):
        """The Trainer of a Config (:func:`ddpm_ms.build.trainer_parts`), fresh or continued from ``resume``
        (a checkpoint path or "latest"). A fresh run refuses a train.out_dir holding another run unless
        ``overwrite`` (which deletes its files); a folder another process is training into is refused always.
        ``start_time``: where the wall clock (and a train.minutes budget) starts; default: now."""
        trainer = cls(**build.trainer_parts(cfg, fresh=resume is None, rank=rank, world_size=world_size,
                                            overwrite=overwrite, start_time=start_time))
        if resume is not None:
            trainer.resume(resume)
        if rank == 0:
            cfg.dump(trainer.folder.file("config.yaml"))
        return trainer

    # ------------------------------------------------------------------------------------------- position
    config = property(lambda self: self.state.config, doc="The run's Config (stored in every checkpoint).")
    step = property(lambda self: self.state.step, doc="Optimizer steps done.")
    epoch = property(lambda self: self.state.epoch, doc="Epochs done.")
    step_in_epoch = property(lambda self: self.state.step_in_epoch, doc="Batches of the current epoch done.")

    @property
    def global_batch(self):
        """Images per optimizer step over all ranks."""
        return self.batches.batch_size * self.world_size

    @property
    def wall_s(self):
        """Seconds this run has taken, from building the Trainer (compile included), over all its launches."""
        return round(self._wall[1] + time.time() - self._wall[0], 2)

    @property
    def best_fd(self):
        """The lowest FD of the run so far (inf before any evaluation, or without best.ckpt keeping)."""
        keeper = self.callback(BestCheckpoint)
        return keeper.best_fd if keeper is not None else float("inf")

    def callback(self, kind):
        """The first callback that is a ``kind`` (a class), or None."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def emit(self, hook, *args):
        """Call ``hook`` (e.g. "on_log") on every callback, in order; returns their results."""
        return [getattr(c, hook)(self, *args) for c in self.callbacks]

    def resume(self, spec):
        """Continue exactly from a checkpoint: a path, or "latest", the newest in the run folder that passes its
        integrity check (:func:`ddpm_ms.checkpoint.read_resumable`)."""
        path, data = ckpt.read_resumable(spec, self.folder.path, warn=lambda line: tqdm.write(line, file=sys.stderr))
        ckpt.restore_state(self.state, data, path)
        self.resumed_config = ckpt.checkpoint_config(data, path)
        self.folder.open_resumed(self.state.step, self.state.metrics_rows)
        rows = self.folder.rows() if self.is_main else []
        self._wall = (self._wall[0], max([row.get("wall_s", 0.0) for row in rows], default=0.0))
        self.emit("on_resume", rows)
        if self.is_main:
            tqdm.write(f"resumed from {path} at step {self.step} (epoch {self.epoch})")

    @property
    def previewer(self):
        """The :class:`~ddpm_ms.monitor.Previewer` of the run's sample grids (rank 0), or None."""
        grids = self.callback(PreviewGrids)
        return grids.previewer if grids is not None else None

    def sample(self, num, seed=0, callback=None):
        """``num`` images [num, C, H, W] from the model as trained so far, as the grids draw them."""
        return self.previewer(num, seed=seed, callback=callback, progress=self.progress)

    def save(self):
        """Write a checkpoint of the current position (the folder keeps the last K); returns its path."""
        return self.folder.save_checkpoint(self.state)

    # ------------------------------------------------------------------------------------------------ loop
    def _steps(self, stop):
        """Run steps until ``total_steps`` or a signal; returns the signal number or None."""
        s = self.state
        while self.total_steps is None or s.step < self.total_steps:   # None: a budget not yet planned
            for x0, t, noise, y in self.batches.epoch(s.epoch, s.step, skip=s.step_in_epoch):
                loss, finite = self.run.train_step(x0, t, noise, y)
                s.step += 1
                s.step_in_epoch += 1
                self.emit("on_step", loss, bool(finite.asnumpy()))   # a scalar read: the step has finished
                if stop["signal"] is not None:
                    return stop["signal"]
                if self.total_steps is not None and s.step >= self.total_steps:
                    break
            if s.step_in_epoch >= self.batches.steps_per_epoch:
                s.epoch += 1
                s.step_in_epoch = 0
                self.emit("on_epoch_end")
        return None

    def fit(self, progress=True):
        """Train to ``total_steps``. Returns a summary dict (``interrupted`` is set after a signal).

        Raises TrainingDiverged after train.max_nonfinite_steps steps in a row with inf/nan gradients,
        leaving the checkpoints written so far as they are.
        """
        self.progress = progress and self.is_main
        start, start_step = time.time(), self.step
        try:
            self.emit("on_fit_start")
            with stop_on_signals() as stop:
                interrupted = self._steps(stop)
            elapsed = time.time() - start
            results = self.emit("on_end", interrupted)
        finally:
            self.emit("on_close")
            self.folder.release()
        policy = self.callback(CheckpointPolicy)
        summary = {"step": self.step, "epoch": self.epoch,
                   "checkpoint": results[self.callbacks.index(policy)] if policy is not None else None,
                   "seconds": elapsed, "img_per_s": (self.step - start_step) * self.global_batch / max(elapsed, 1e-9),
                   "interrupted": interrupted, "rank": self.rank, "world_size": self.world_size}
        if self.is_main:
            summary["best_fd"] = self.best_fd if self.best_fd != float("inf") else None
        return summary
