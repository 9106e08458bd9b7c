"""The training loop: data, compiled step, logging, checkpoints, grids and exact resume."""
import glob
import json
import os
import signal
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import mindspore as ms
import mindspore.dataset as ds
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError
from .paths import make_output_dir
from .data import DataError, build_dataset, check_data_fits_model
from .sampling import Denoiser, Recorder, generate
from .trainer import build_run, drop_labels, step_noise
from .viz import plot_loss_curve, save_gif, save_grid


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


def epoch_dataset(cfg, epoch, labels=False, rank=0, world_size=1):
    """This rank's shuffled, batched shard of one epoch; its order depends only on (seed, epoch, world_size)."""
    ds.config.set_seed(cfg.train.seed * 100003 + epoch)
    shards = dict(num_shards=world_size, shard_id=rank) if world_size > 1 else {}
    return build_dataset(cfg.data, cfg.train.batch_size, labels=labels, **shards)


def truncate_metrics(path, step):
    """Drop the metrics.jsonl rows past ``step`` (a resumed run replays them), rewriting the file atomically."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n") for line in f if line.strip()]
    kept = [line for line in rows if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) < len(rows):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in kept)
        os.replace(tmp, path)


def _row_step(line):
    """The step of a metrics.jsonl row, or None for a row torn by a killed process."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


RUN_FILES = ("config.yaml", "metrics.jsonl", "loss_curve.png", "samples_epoch*.png", "samples_final.png",
             "samples_final.npy", "denoising.gif", f"{ckpt.PREFIX}*.ckpt")   # what Trainer writes


class TrainingDiverged(RuntimeError):
    """Too many optimizer steps in a row had non-finite gradients. The message is one line."""


class Trainer:
    """Owns one run's state and writes everything under ``cfg.train.out_dir``.

    Files: config.yaml, metrics.jsonl, loss_curve.png, samples_epochNNN.png,
    samples_final.png, denoising.gif, ckpt_stepNNNNNNNN.ckpt (the last K).
    Under msrun (``world_size`` > 1) every rank trains on its shard and only
    rank 0 writes files.
    """

    def __init__(self, cfg, resume=None, rank=0, world_size=1, overwrite=False):
        check_data_fits_model(cfg.data, cfg.model)
        self.cfg = cfg
        self.out = cfg.train.out_dir
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.progress = True       # progress bars (fit(progress=False) turns them off, sampling's too)
        self._tick = (time.time(), 0)   # (time, step) of the last metrics row, for img/s
        self._denoiser = None
        self.conditional = cfg.model.num_classes is not None
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        if self.is_main:
            make_output_dir(self.out, "train.out_dir")
            ckpt.remove_stale_temporaries(self.out)   # left by a process killed mid-write
            if resume is None:
                self._claim_out_dir(overwrite)
        probe = epoch_dataset(cfg, 0, rank=rank, world_size=world_size)
        self.steps_per_epoch = probe.get_dataset_size()
        if self.steps_per_epoch == 0:
            raise DataError("the dataset yields no full batch: lower train.batch_size")
        self.run = build_run(cfg, self.steps_per_epoch, world_size)
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.checkpoints = []      # this run's checkpoints, oldest first: the only ones pruning deletes
        if resume is not None:
            path = ckpt.resolve_checkpoint(resume, self.out)
            data = ckpt.read_checkpoint(path)
            self.step, self.epoch, self.step_in_epoch = ckpt.restore_training(
                data, self.run.model, self.run.optimizer, self.run.loss_scaler, path, self.run.ema)
            # the continued run's own earlier checkpoints, which keep_last may prune
            self.checkpoints = [c for c in ckpt.list_checkpoints(self.out) if ckpt.checkpoint_step(c) <= self.step]
            if self.is_main:
                truncate_metrics(self.metrics_path, self.step)
                tqdm.write(f"resumed from {path} at step {self.step} (epoch {self.epoch})")
        if self.is_main:
            cfg.dump(os.path.join(self.out, "config.yaml"))
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total

    def _claim_out_dir(self, overwrite):
        """A fresh run refuses a folder holding another run's files, or (overwrite) removes them first.

        Only the files a run writes (RUN_FILES) count and are removed; anything else in the folder is left alone.
        """
        old = sorted(p for pattern in RUN_FILES for p in glob.glob(os.path.join(self.out, pattern)))
        if not old:
            return
        if not overwrite:
            raise ConfigError(f"train.out_dir {self.out} already holds a run ({os.path.basename(old[0])}, ...): "
                              "continue it with --resume latest, or start over with --overwrite")
        for path in old:
            os.remove(path)

    @property
    def global_batch(self):
        """Images per optimizer step over all ranks."""
        return self.cfg.train.batch_size * self.world_size

    def save(self):
        """Write a checkpoint for the current position and keep the last K."""
        path = os.path.join(self.out, ckpt.checkpoint_name(self.step))
        ckpt.save_checkpoint(path, self.run.optimizer, self.cfg, self.run.loss_scaler,
                             self.step, self.epoch, self.step_in_epoch,
                             extra=self.run.ema.state() if self.run.ema else None)
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        self.checkpoints = ckpt.prune_checkpoints(self.checkpoints, self.cfg.train.keep_last)
        return path

    @property
    def denoiser(self):
        """The model as the samplers see it (built once, so its compiled graph is reused by every grid)."""
        if self._denoiser is None:
            self._denoiser = Denoiser(self.run.model, self.run.sched, null_class=self.cfg.model.num_classes,
                                      jit=self.cfg.train.jit)
        return self._denoiser

    def sample(self, num, seed=0, callback=None):
        """Sample ``num`` images [num, C, H, W] with the EMA weights (if any); ``callback`` sees every step.

        A class-conditional model draws labels 0, 1, ... in turn with guidance ``train.guidance``.
        """
        m, t_cfg, size = self.cfg.model, self.cfg.train, self.cfg.data.image_size
        labels = np.arange(num) % m.num_classes if self.conditional else None
        self.run.model.set_train(False)
        try:
            with self.run.ema.swapped() if self.run.ema else nullcontext():
                return generate(self.denoiser, (m.channels, size, size), num, seed=seed, sampler=t_cfg.sample_sampler,
                                steps=t_cfg.sample_steps, labels=labels, guidance=t_cfg.guidance, callback=callback,
                                progress=self.progress)
        finally:
            self.run.model.set_train(True)

    @property
    def grid_columns(self):
        """Columns of the sample grids: one per class for a conditional model (labels go 0, 1, ... in turn)."""
        return self.cfg.model.num_classes if self.conditional else 8

    def _log(self, loss, img_per_s):
        row = {"step": self.step, "epoch": self.epoch, "loss": loss,
               "lr": float(self.run.lrs[min(self.step, len(self.run.lrs)) - 1]),
               "loss_scale": float(self.run.loss_scaler.scale_value.asnumpy()), "img_per_s": img_per_s}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def _batches(self):
        """Batches of the current epoch, skipping those a resumed run already consumed."""
        dataset = epoch_dataset(self.cfg, self.epoch, self.conditional, self.rank, self.world_size)
        for i, columns in enumerate(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)):
            if i >= self.step_in_epoch:
                yield columns[0], (columns[1] if self.conditional else None)

    def _train_step(self, images, labels):
        """One optimizer step (and EMA update) on a batch; returns (loss Tensor, grads_finite bool)."""
        seed, k = self.cfg.train.seed, self.cfg.model.num_classes
        t, noise = step_noise(seed, self.step, images.shape, self.run.sched.num_timesteps, self.rank)
        y = None if labels is None else drop_labels(seed, self.step, labels, self.cfg.train.cond_drop_prob, k)
        loss, finite = self.run.step(ms.Tensor(images), t, noise, y)
        self.step += 1
        self.step_in_epoch += 1
        if self.run.ema is not None and self.step % self.cfg.ema.update_every == 0:
            self.run.ema.update()
        return loss, bool(finite.asnumpy())   # a scalar read: with blocking host runs the step has finished anyway

    def _check_divergence(self, nonfinite):
        """TrainingDiverged once ``nonfinite`` steps in a row (train.max_nonfinite_steps) had inf/nan gradients."""
        limit = self.cfg.train.max_nonfinite_steps
        if nonfinite < limit:
            return
        kept = self.checkpoints[-1] if self.checkpoints else "none written yet"
        raise TrainingDiverged(f"training diverged: the gradients were inf/nan for {limit} steps in a row, "
                               f"steps {self.step - limit + 1}..{self.step} (train.max_nonfinite_steps); "
                               f"last good checkpoint: {kept}; try a lower train.lr")

    def _end_epoch(self):
        """Advance the epoch counter; rank 0 draws the epoch's sample grid."""
        self.epoch += 1
        self.step_in_epoch = 0
        if self.is_main:
            grid = self.sample(self.cfg.train.sample_num, seed=self.epoch)
            save_grid(grid, os.path.join(self.out, f"samples_epoch{self.epoch:03d}.png"), nrow=self.grid_columns,
                      title=f"epoch {self.epoch}, step {self.step}")

    def _write_final(self, interrupted):
        """Rank 0: last checkpoint, loss curve and (unless interrupted) the final grid, .npy and GIF."""
        path = self.save()
        if os.path.exists(self.metrics_path):
            plot_loss_curve(self.metrics_path, os.path.join(self.out, "loss_curve.png"))
        if interrupted is None:
            t_cfg = self.cfg.train
            recorder = Recorder(("x",))
            final = self.sample(t_cfg.sample_num, seed=12345, callback=recorder)
            save_grid(final, os.path.join(self.out, "samples_final.png"), nrow=self.grid_columns,
                      title=f"step {self.step}")
            np.save(os.path.join(self.out, "samples_final.npy"), final)
            if t_cfg.gif:
                frames = recorder.stack("x")
                save_gif(frames, os.path.join(self.out, "denoising.gif"), index=0, every=max(1, len(frames) // 100))
        return path

    def _maybe_log(self, loss, bar):
        """Every train.log_every steps (and at the last), rank 0 appends a metrics row and updates the bar."""
        if not self.is_main or (self.step % self.cfg.train.log_every and self.step != self.total_steps):
            return
        now = time.time()
        rate = (self.step - self._tick[1]) * self.global_batch / max(now - self._tick[0], 1e-9)
        row = self._log(float(loss.asnumpy()), rate)
        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.1f}")
        self._tick = (now, self.step)

    def _epochs(self, bar, stop):
        """Run steps until ``total_steps`` or a signal; returns the signal number or None."""
        nonfinite, save_due = 0, False   # steps in a row with inf/nan grads; a checkpoint waits for a finite step
        while self.step < self.total_steps:
            for images, labels in self._batches():
                loss, finite = self._train_step(images, labels)
                nonfinite = 0 if finite else nonfinite + 1
                bar.update(1)
                self._maybe_log(loss, bar)
                self._check_divergence(nonfinite)
                save_due = save_due or self.step % self.cfg.train.ckpt_every == 0
                if self.is_main and save_due and finite:
                    self.save()
                    save_due = False
                if stop["signal"] is not None:
                    return stop["signal"]
                if self.step >= self.total_steps:
                    break
            if self.step_in_epoch >= self.steps_per_epoch:
                self._end_epoch()
        return None

    def fit(self, progress=True):
        """Train to ``total_steps``. Returns a summary dict (``interrupted`` is set after a signal).

        Raises TrainingDiverged after train.max_nonfinite_steps steps in a row with inf/nan gradients,
        leaving the checkpoints written so far as they are.
        """
        self.progress = progress
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (progress and self.is_main),
                   unit="step")
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
        return summary
