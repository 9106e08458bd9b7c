"""Training: the :class:`Trainer` loop, and the factories that build its parts from one Config.

    trainer = Trainer.from_config(cfg)          # or Trainer.from_config(cfg, resume="latest")
    summary = trainer.fit()

The parts, each built once by ``Trainer.from_config``: the compiled :class:`~ddpm_ms.train_step.TrainStep`
(model, schedule, Adam, loss scaler: :func:`build_run`), the :class:`~ddpm_ms.batches.BatchSource` that feeds it,
the :class:`~ddpm_ms.run_folder.RunFolder` it writes, the :class:`~ddpm_ms.monitor.Previewer` for sample grids,
and the :class:`~ddpm_ms.monitor.QualityProbe` that scores samples during training (train.eval_every).
"""
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import amp, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .batches import BatchSource
from .data import check_data_fits_model, resolve_fashion_dir
from .diffusion import loss_weights
from .ema import EMA
from .model import Unet
from .monitor import Previewer, QualityProbe
from .run_folder import BEST, RunFolder
from .sampling import Denoiser, Recorder
from .schedule import NoiseSchedule
from .train_step import TrainStep, mixed_precision
from .viz import save_gif, save_grid


def build_model(model_cfg):
    """Unet from a ModelConfig: the one place config becomes keyword arguments."""
    return Unet(**vars(model_cfg))


def build_schedule(diffusion_cfg):
    """NoiseSchedule from a DiffusionConfig."""
    d = diffusion_cfg
    return NoiseSchedule.from_name(d.beta_schedule, d.timesteps, d.beta_start, d.beta_end)


def build_loss_weights(sched, diffusion_cfg):
    """The per-timestep loss weights [T] float64 a DiffusionConfig asks for (diffusion.loss_weighting)."""
    d = diffusion_cfg
    return loss_weights(sched, d.objective, d.loss_weighting, p2_gamma=d.p2_gamma, p2_k=d.p2_k,
                        min_snr_gamma=d.min_snr_gamma)


def lr_schedule(train_cfg, steps_per_epoch):
    """The tutorial's per-step LR list: nn.cosine_decay_lr(min_lr, lr, epochs*steps, steps, epochs)."""
    t = train_cfg
    return nn.cosine_decay_lr(min_lr=t.min_lr, max_lr=t.lr, total_step=t.epochs * steps_per_epoch,
                              step_per_epoch=steps_per_epoch, decay_epoch=t.epochs)


@dataclass
class Run:
    """Everything a training run needs, built from one Config."""
    model: Unet
    sched: NoiseSchedule
    optimizer: nn.Optimizer
    loss_scaler: amp.DynamicLossScaler
    train_step: TrainStep
    lrs: list
    ema: Optional[EMA]


def build_run(cfg, steps_per_epoch, world_size=1):
    """Model, schedule, Adam with cosine-decay LR, loss scaler, compiled step and EMA from a Config.

    Every rank seeds the same, so all start from the same parameters. With
    ``train.lr_scaling: linear`` the LR is multiplied by ``world_size``.
    """
    ms.set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    sched = build_schedule(cfg.diffusion)
    scale = world_size if cfg.train.lr_scaling == "linear" else 1
    lrs = [lr * scale for lr in lr_schedule(cfg.train, steps_per_epoch)]
    optimizer = nn.Adam(model.trainable_params(), learning_rate=lrs)
    scaler = amp.DynamicLossScaler(cfg.train.loss_scale, cfg.train.scale_factor, cfg.train.scale_window)
    model.set_train(True)   # training kernels (see model.GroupNorm); the Previewer switches it off and back
    step = TrainStep(mixed_precision(model, cfg.train.amp), sched, optimizer, scaler, cfg.diffusion.loss_type,
                     jit=cfg.train.jit, world_size=world_size, objective=cfg.diffusion.objective,
                     weights=build_loss_weights(sched, cfg.diffusion))
    ema = EMA(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    return Run(model, sched, optimizer, scaler, step, lrs, ema)


def build_previewer(run, cfg):
    """The Previewer of a run: its EMA weights, the config's sampler (train.sample_sampler/sample_steps)."""
    size = cfg.data.image_size
    denoiser = Denoiser.from_config(run.model, run.sched, cfg, jit=cfg.train.jit)
    return Previewer(run.model, denoiser, (cfg.model.channels, size, size), cfg.train.sample_sampler,
                     cfg.train.sample_steps, cfg.train.guidance, cfg.model.num_classes, run.ema)


def build_probe(previewer, cfg):
    """The QualityProbe of train.eval_every (None when it is 0): FD/KID of train.eval_num samples."""
    if not cfg.train.eval_every:
        return None
    from .metrics import Evaluator  # pylint: disable=import-outside-toplevel
    return QualityProbe(previewer, Evaluator(resolve_fashion_dir(cfg.data.root)), cfg.train.eval_num)


@dataclass(frozen=True)
class LoopSettings:
    """How often the loop logs, saves, previews and evaluates, and when it stops (from train.*)."""
    total_steps: int
    log_every: int = 50
    ckpt_every: int = 1000
    max_nonfinite_steps: int = 25
    sample_num: int = 64
    gif: bool = True
    eval_every: int = 0              # epochs between evaluations (0: none)
    ema_update_every: int = 1

    @classmethod
    def from_config(cls, cfg, steps_per_epoch):
        """Settings of a Config for an epoch of ``steps_per_epoch`` steps (train.max_steps caps the total)."""
        t = cfg.train
        total = t.epochs * steps_per_epoch
        return cls(min(total, t.max_steps) if t.max_steps else total, t.log_every, t.ckpt_every,
                   t.max_nonfinite_steps, t.sample_num, t.gif, t.eval_every, cfg.ema.update_every)


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


class TrainingDiverged(RuntimeError):
    """Too many optimizer steps in a row had non-finite gradients. The message is one line."""


class Trainer:
    """Runs one training run's steps and writes its folder; build it with :meth:`from_config`.

    Parts: ``run`` (model, schedule, optimizer, loss scaler, compiled ``train_step``, per-step LRs, EMA),
    ``batches`` (a BatchSource), ``folder`` (a RunFolder), ``previewer`` (sample grids), ``probe`` (FD/KID
    during training, or None) and ``settings`` (LoopSettings). ``config`` is stored in every checkpoint.
    Position: ``step`` (optimizer steps done), ``epoch``, ``step_in_epoch``. Under msrun (``world_size`` > 1)
    every rank trains on its shard and only rank 0 writes files, previews and evaluates.
    """

    def __init__(self, config, run, batches, folder, previewer, settings, probe=None, rank=0, world_size=1):
        self.config, self.run, self.batches, self.folder = config, run, batches, folder
        self.previewer, self.settings, self.probe = previewer, settings, probe
        self.rank, self.world_size, self.is_main = rank, world_size, rank == 0
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.best_fd = math.inf
        self.progress = True            # progress bars (fit(progress=False) turns them off, sampling's too)
        self._wall = (time.time(), 0.0)  # (start time, wall seconds of the run before it) for the wall_s column
        self._tick = (time.time(), 0)    # (time, step) of the last metrics row, for img/s

    @classmethod
    def from_config(cls, cfg, resume=None, rank=0, world_size=1, overwrite=False):
        """The Trainer of a Config, fresh or continued from ``resume`` (a checkpoint path or "latest").

        A fresh run refuses a train.out_dir holding another run unless ``overwrite`` (which deletes its files).
        """
        start = time.time()
        check_data_fits_model(cfg.data, cfg.model)
        t = cfg.train
        folder = RunFolder(t.out_dir, t.keep_last, is_main=rank == 0)
        if resume is None:
            folder.open_fresh(overwrite)
        batches = BatchSource(cfg.data, t.batch_size, t.seed, cfg.diffusion.timesteps, cfg.model.num_classes,
                              t.cond_drop_prob, rank, world_size)
        run = build_run(cfg, batches.steps_per_epoch, world_size)
        previewer = build_previewer(run, cfg)
        trainer = cls(cfg, run, batches, folder, previewer, LoopSettings.from_config(cfg, batches.steps_per_epoch),
                      build_probe(previewer, cfg) if rank == 0 else None, rank, world_size)
        trainer._wall = (start, 0.0)
        if resume is not None:
            trainer.resume(resume)
        if rank == 0:
            cfg.dump(folder.file("config.yaml"))
        return trainer

    def resume(self, spec):
        """Continue exactly from a checkpoint (a path, or "latest" in the run folder)."""
        path = ckpt.resolve_checkpoint(spec, self.folder.path)
        r = self.run
        self.step, self.epoch, self.step_in_epoch = ckpt.restore_training(
            ckpt.read_checkpoint(path), r.model, r.optimizer, r.loss_scaler, path, r.ema)
        self.folder.open_resumed(self.step)
        rows = self.folder.rows() if self.is_main else []
        self.best_fd = min([row["fd"] for row in rows if "fd" in row], default=math.inf)
        self._wall = (self._wall[0], max([row.get("wall_s", 0.0) for row in rows], default=0.0))
        if self.is_main:
            tqdm.write(f"resumed from {path} at step {self.step} (epoch {self.epoch})")

    @property
    def global_batch(self):
        """Images per optimizer step over all ranks."""
        return self.batches.batch_size * self.world_size

    @property
    def wall_s(self):
        """Seconds this run has taken, from building the Trainer (compile included), over all its launches."""
        return round(self._wall[1] + time.time() - self._wall[0], 2)

    def checkpoint_state(self):
        """What a checkpoint of the current position holds (keyword arguments of ``checkpoint.save_checkpoint``)."""
        r = self.run
        return dict(optimizer=r.optimizer, cfg=self.config, loss_scaler=r.loss_scaler, step=self.step,
                    epoch=self.epoch, step_in_epoch=self.step_in_epoch, extra=r.ema.state() if r.ema else None)

    def save(self):
        """Write a checkpoint for the current position and keep the last K; returns its path."""
        return self.folder.save_checkpoint(self.checkpoint_state())

    def sample(self, num, seed=0, callback=None):
        """``num`` images [num, C, H, W] from the model as trained so far (see :class:`Previewer`)."""
        return self.previewer(num, seed=seed, callback=callback, progress=self.progress)

    def evaluate(self, bar=None):
        """Score samples (the probe), log the row, keep best.ckpt by FD; returns the row."""
        row = self.folder.log({"step": self.step, "epoch": self.epoch, **self.probe(self.progress),
                               "wall_s": self.wall_s})
        if row["fd"] < self.best_fd:
            self.best_fd = row["fd"]
            self.folder.save_checkpoint(self.checkpoint_state(), name=BEST)
        if bar is not None:
            bar.set_postfix(fd=f"{row['fd']:.1f}", best=f"{self.best_fd:.1f}", eval_s=f"{row['eval_s']:.0f}")
        tqdm.write(f"eval at step {self.step}: FD {row['fd']:.2f}, KID {row['kid']:.4f} on {row['eval_num']} "
                   f"samples (best FD {self.best_fd:.2f}); took {row['eval_s']:.1f} s")
        return row

    def _train_step(self, x0, t, noise, y):
        """One optimizer step (and EMA update); returns (loss Tensor, grads_finite bool)."""
        loss, finite = self.run.train_step(x0, t, noise, y)
        self.step += 1
        self.step_in_epoch += 1
        if self.run.ema is not None and self.step % self.settings.ema_update_every == 0:
            self.run.ema.update()
        return loss, bool(finite.asnumpy())   # a scalar read: with blocking host runs the step has finished anyway

    def _check_divergence(self, nonfinite):
        """TrainingDiverged once ``nonfinite`` steps in a row (train.max_nonfinite_steps) had inf/nan gradients."""
        limit = self.settings.max_nonfinite_steps
        if nonfinite < limit:
            return
        kept = self.folder.last_checkpoint or "none written yet"
        raise TrainingDiverged(f"training diverged: the gradients were inf/nan for {limit} steps in a row, "
                               f"steps {self.step - limit + 1}..{self.step} (train.max_nonfinite_steps); "
                               f"last good checkpoint: {kept}; try a lower train.lr")

    def _end_epoch(self, bar):
        """Advance the epoch counter; rank 0 draws the epoch's sample grid and evaluates when one is due."""
        self.epoch += 1
        self.step_in_epoch = 0
        if not self.is_main:
            return
        grid = self.sample(self.settings.sample_num, seed=self.epoch)
        save_grid(grid, self.folder.file(f"samples_epoch{self.epoch:03d}.png"), nrow=self.previewer.columns,
                  title=f"epoch {self.epoch}, step {self.step}")
        if self.probe is not None and self.epoch % self.settings.eval_every == 0:
            self.evaluate(bar)

    def _write_final(self, interrupted):
        """Rank 0: last checkpoint, the evaluation of the last step (if due), curves, final grid, .npy and GIF."""
        path = self.save()
        if interrupted is None and self.probe is not None and not any(
                "fd" in row and row["step"] == self.step for row in self.folder.rows()):
            self.evaluate()
        self.folder.plot_curves()
        if interrupted is None:
            recorder = Recorder(("x",))
            final = self.sample(self.settings.sample_num, seed=12345, callback=recorder)
            save_grid(final, self.folder.file("samples_final.png"), nrow=self.previewer.columns,
                      title=f"step {self.step}")
            np.save(self.folder.file("samples_final.npy"), final)
            if self.settings.gif:
                frames = recorder.stack("x")
                save_gif(frames, self.folder.file("denoising.gif"), index=0, every=max(1, len(frames) // 100))
        return path

    def _maybe_log(self, loss, bar):
        """Every train.log_every steps (and at the last), rank 0 appends a metrics row and updates the bar."""
        s = self.settings
        if not self.is_main or (self.step % s.log_every and self.step != s.total_steps):
            return
        now = time.time()
        rate = (self.step - self._tick[1]) * self.global_batch / max(now - self._tick[0], 1e-9)
        lr = float(self.run.lrs[min(self.step, len(self.run.lrs)) - 1])
        row = self.folder.log({"step": self.step, "epoch": self.epoch, "loss": float(loss.asnumpy()), "lr": lr,
                               "loss_scale": float(self.run.loss_scaler.scale_value.asnumpy()),
                               "img_per_s": rate, "wall_s": self.wall_s})
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.1f}",
                        **({"best_fd": f"{self.best_fd:.1f}"} if math.isfinite(self.best_fd) else {}))
        self._tick = (now, self.step)

    def _epochs(self, bar, stop):
        """Run steps until ``total_steps`` or a signal; returns the signal number or None."""
        s = self.settings
        nonfinite, save_due = 0, False   # steps in a row with inf/nan grads; a checkpoint waits for a finite step
        while self.step < s.total_steps:
            for x0, t, noise, y in self.batches.epoch(self.epoch, self.step, skip=self.step_in_epoch):
                loss, finite = self._train_step(x0, t, noise, y)
                nonfinite = 0 if finite else nonfinite + 1
                bar.update(1)
                self._maybe_log(loss, bar)
                self._check_divergence(nonfinite)
                save_due = save_due or self.step % s.ckpt_every == 0
                if self.is_main and save_due and finite:
                    self.save()
                    save_due = False
                if stop["signal"] is not None:
                    return stop["signal"]
                if self.step >= s.total_steps:
                    break
            if self.step_in_epoch >= self.batches.steps_per_epoch:
                self._end_epoch(bar)
        return None

    def fit(self, progress=True):
        """Train to ``settings.total_steps``. Returns a summary dict (``interrupted`` is set after a signal).

        Raises TrainingDiverged after train.max_nonfinite_steps steps in a row with inf/nan gradients,
        leaving the checkpoints written so far as they are.
        """
        self.progress = progress
        bar = tqdm(total=self.settings.total_steps, initial=self.step, desc="train",
                   disable=not (progress and self.is_main), unit="step")
        start, start_step = time.time(), self.step
        self._tick = (start, self.step)
        try:
            with stop_on_signals() as stop:
                interrupted = self._epochs(bar, stop)
        finally:
            bar.close()
        elapsed = time.time() - start
        summary = {"step": self.step, "epoch": self.epoch, "checkpoint": None, "seconds": elapsed,
                   "img_per_s": (self.step - start_step) * self.global_batch / max(elapsed, 1e-9),
                   "interrupted": interrupted, "rank": self.rank, "world_size": self.world_size}
        if self.is_main:
            summary["checkpoint"] = self._write_final(interrupted)
            summary["best_fd"] = self.best_fd if math.isfinite(self.best_fd) else None
        return summary
