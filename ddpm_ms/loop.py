"""The training loop: data, compiled step, logging, checkpoints, grids and exact resume."""
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
from .data import DataError, build_dataset
from .sampling import generate
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


class Trainer:
    """Owns one run's state and writes everything under ``cfg.train.out_dir``.

    Files: config.yaml, metrics.jsonl, loss_curve.png, samples_epochNNN.png,
    samples_final.png, denoising.gif, ckpt_stepNNNNNNNN.ckpt (the last K).
    Under msrun (``world_size`` > 1) every rank trains on its shard and only
    rank 0 writes files.
    """

    def __init__(self, cfg, resume=None, rank=0, world_size=1, overwrite=False):
        self.cfg = cfg
        self.out = cfg.train.out_dir
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.progress = True       # progress bars (fit(progress=False) turns them off, sampling's too)
        self.conditional = cfg.model.num_classes is not None
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
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
                tqdm.write(f"resumed from {path} at step {self.step} (epoch {self.epoch})")
        if self.is_main:
            cfg.dump(os.path.join(self.out, "config.yaml"))
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total

    def _claim_out_dir(self, overwrite):
        """A fresh run refuses a folder holding another run's checkpoints or metrics, or (overwrite) removes them."""
        old = ckpt.list_checkpoints(self.out) + ([self.metrics_path] if os.path.exists(self.metrics_path) else [])
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

    def sample(self, num, frames=False, seed=0):
        """Sample ``num`` images with the EMA weights (if any): [num, C, H, W] (and the first batch's frames).

        A class-conditional model draws labels 0, 1, ... in turn with guidance ``train.guidance``.
        """
        m, t_cfg, size = self.cfg.model, self.cfg.train, self.cfg.data.image_size
        labels = np.arange(num) % m.num_classes if self.conditional else None
        self.run.model.set_train(False)
        try:
            with self.run.ema.swapped() if self.run.ema else nullcontext():
                return generate(self.run.model, self.run.sched, (m.channels, size, size), num, seed=seed,
                                sampler=t_cfg.sample_sampler, steps=t_cfg.sample_steps, labels=labels,
                                guidance=t_cfg.guidance, null_class=m.num_classes, frames=frames, jit=t_cfg.jit,
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
        """One optimizer step (and EMA update) on a batch; returns the loss Tensor."""
        seed, k = self.cfg.train.seed, self.cfg.model.num_classes
        t, noise = step_noise(seed, self.step, images.shape, self.run.sched.num_timesteps, self.rank)
        y = None if labels is None else drop_labels(seed, self.step, labels, self.cfg.train.cond_drop_prob, k)
        loss, _ = self.run.step(ms.Tensor(images), t, noise, y)
        self.step += 1
        self.step_in_epoch += 1
        if self.run.ema is not None and self.step % self.cfg.ema.update_every == 0:
            self.run.ema.update()
        return loss

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
            final, frames = self.sample(t_cfg.sample_num, frames=True, seed=12345)
            save_grid(final, os.path.join(self.out, "samples_final.png"), nrow=self.grid_columns,
                      title=f"step {self.step}")
            np.save(os.path.join(self.out, "samples_final.npy"), final)
            if t_cfg.gif:
                save_gif(frames, os.path.join(self.out, "denoising.gif"), index=0, every=max(1, len(frames) // 100))
        return path

    def fit(self, progress=True):
        """Train to ``total_steps``. Returns a summary dict (``interrupted`` is set after a signal)."""
        t_cfg = self.cfg.train
        self.progress = progress
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (progress and self.is_main),
                   unit="step")
        interrupted, start, start_step = None, time.time(), self.step
        tick, tick_step = start, self.step
        with stop_on_signals() as stop:
            while self.step < self.total_steps and interrupted is None:
                for images, labels in self._batches():
                    loss = self._train_step(images, labels)
                    bar.update(1)
                    if self.is_main and (self.step % t_cfg.log_every == 0 or self.step == self.total_steps):
                        now = time.time()
                        rate = (self.step - tick_step) * self.global_batch / max(now - tick, 1e-9)
                        row = self._log(float(loss.asnumpy()), rate)   # the only host sync in the loop
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{rate:.1f}")
                        tick, tick_step = now, self.step
                    if self.is_main and self.step % t_cfg.ckpt_every == 0:
                        self.save()
                    interrupted = stop["signal"]
                    if interrupted is not None or self.step >= self.total_steps:
                        break
                if interrupted is None and self.step_in_epoch >= self.steps_per_epoch:
                    self._end_epoch()
        bar.close()
        elapsed = time.time() - start
        summary = {"step": self.step, "epoch": self.epoch, "checkpoint": None, "seconds": elapsed,
                   "img_per_s": (self.step - start_step) * self.global_batch / max(elapsed, 1e-9),
                   "interrupted": interrupted, "rank": self.rank, "world_size": self.world_size}
        if self.is_main:
            summary["checkpoint"] = self._write_final(interrupted)
        return summary
