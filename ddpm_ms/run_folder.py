"""One training run's folder: its config, metrics log, checkpoints (the last K and the best) and figures.

A run holds an exclusive lock on its folder (``flock`` on ``.lock``, which the OS releases when the process
dies), so a second run into the same folder stops at once, naming the process that holds it.
"""
import fcntl
import glob
import json
import os

from . import checkpoint as ckpt
from .errors import ConfigError, OutputError, RunLocked
from .paths import make_output_dir, save_text
from .viz import plot_fd_curve, plot_loss_curve, read_metrics

LOCK = ".lock"
_HELD = {}   # real path of a locked folder -> the open lock file descriptor (this process's locks)


def lock_folder(path):
    """Take the exclusive lock on run folder ``path`` for this process (a no-op if it holds it already).

    RunLocked naming the folder and the other process's pid if another process holds it.
    """
    key = os.path.realpath(path)
    if key in _HELD:
        return
    fd = os.open(os.path.join(path, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(f"train.out_dir {path} is in use by another run (process {holder}): wait for it to "
                        "finish, or choose another train.out_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[key] = fd


def unlock_folder(path):
    """Release this process's lock on ``path`` (if it holds it)."""
    fd = _HELD.pop(os.path.realpath(path), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

BEST = "best.ckpt"
RUN_FILES = ("config.yaml", "metrics.jsonl", "loss_curve.png", "fd_curve.png", "samples_epoch*.png",
             "samples_final.png", "samples_final.npy", "denoising.gif", f"{ckpt.PREFIX}*.ckpt", BEST)


class RunFolder:
    """The files of one run under ``path``; only rank 0 (``is_main``) writes any.

    config.yaml, metrics.jsonl (one JSON row per log or evaluation), loss_curve.png, fd_curve.png,
    samples_*.png/.npy, denoising.gif, ckpt_stepNNNNNNNN.ckpt (the last ``keep_last``) and best.ckpt.
    """

    def __init__(self, path, keep_last=3, is_main=True):
        self.path, self.keep_last, self.is_main = path, keep_last, is_main
        self.metrics_path = self.file("metrics.jsonl")
        self.checkpoints = []      # this run's checkpoints, oldest first: the only ones pruning deletes
        self.rows_written = 0      # rows in metrics.jsonl: a checkpoint records how many preceded it

    def file(self, name):
        """The path of a file in the run folder."""
        return os.path.join(self.path, name)

    def open_fresh(self, overwrite=False):
        """Create the folder for a new run. A folder holding another run's files (RUN_FILES) is refused, or with
        ``overwrite`` those files are removed first; anything else in it is left alone."""
        if not self.is_main:
            return
        self._prepare()
        old = sorted(p for pattern in RUN_FILES for p in glob.glob(self.file(pattern)))
        if not old:
            return
        if not overwrite:
            raise ConfigError(f"train.out_dir {self.path} already holds a run ({os.path.basename(old[0])}, ...): "
                              "continue it with --resume latest, or start over with --overwrite")
        for path in old:
            os.remove(path)

    def open_resumed(self, step, rows=None):
        """Continue the run in this folder at ``step``: its checkpoints up to ``step`` may be pruned, and the
        metrics rows written after the checkpoint (which the resumed run replays) are dropped: all but the first
        ``rows`` (the count the checkpoint recorded), or for an older checkpoint the rows past ``step``."""
        self._prepare()
        self.checkpoints = [c for c in ckpt.list_checkpoints(self.path) if ckpt.checkpoint_step(c) <= step]
        if self.is_main:
            self._truncate_metrics(step, rows)

    def claim(self):
        """Create the folder and take its lock for this run (a RunLocked error if another process holds it)."""
        self._prepare()

    def _prepare(self):
        if self.is_main:
            make_output_dir(self.path, "train.out_dir")
            lock_folder(self.path)                      # before anything in the folder is touched
            ckpt.remove_stale_temporaries(self.path)   # left by a process killed mid-write

    def release(self):
        """Give up the folder's lock (the run is over)."""
        if self.is_main:
            unlock_folder(self.path)

    def save_checkpoint(self, state, name=None):
        """Write ``state`` (a :class:`~ddpm_ms.checkpoint.TrainingState`) atomically, as ckpt_step<step>.ckpt
        pruned to the last K, or as ``name`` (e.g. best.ckpt) left alone; returns its path."""
        state.metrics_rows = self.rows_written
        if name is not None:
            return ckpt.save_state(self.file(name), state)
        path = ckpt.save_state(self.file(ckpt.checkpoint_name(state.step)), state)
        if path not in self.checkpoints:
            self.checkpoints.append(path)
        self.checkpoints = ckpt.prune_checkpoints(self.checkpoints, self.keep_last)
        return path

    @property
    def last_checkpoint(self):
        """The newest checkpoint this run wrote (or kept on resume), or None."""
        return self.checkpoints[-1] if self.checkpoints else None

    def log(self, row):
        """Append one JSON row to metrics.jsonl (one write of the whole line)."""
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            self.rows_written += 1
        except OSError as e:
            raise OutputError(f"could not append to {self.metrics_path}: {e.strerror or e}; "
                              "the rows written before are intact") from None
        return row

    def rows(self):
        """The rows of metrics.jsonl so far ([] before the first)."""
        return read_metrics(self.metrics_path) if os.path.exists(self.metrics_path) else []

    def _truncate_metrics(self, step, rows=None):
        """Keep the first ``rows`` complete rows (or, with ``rows`` None, those up to ``step``), dropping any torn
        by a killed process, rewriting the file atomically."""
        if not os.path.exists(self.metrics_path):
            self.rows_written = 0
            return
        with open(self.metrics_path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        whole = [line for line in lines if _row_step(line) is not None]
        kept = whole[:rows] if rows is not None else [line for line in whole if _row_step(line) <= step]
        if len(kept) < len(lines):
            save_text(self.metrics_path, "".join(line + "\n" for line in kept))
        self.rows_written = len(kept)

    def plot_curves(self):
        """loss_curve.png, and fd_curve.png when the run was evaluated; returns the paths written."""
        rows = self.rows()
        paths = []
        if any("loss" in r for r in rows):
            paths.append(plot_loss_curve(self.metrics_path, self.file("loss_curve.png")))
        if any("fd" in r for r in rows):
            paths.append(plot_fd_curve(self.metrics_path, self.file("fd_curve.png")))
        return paths


def _row_step(line):
    """The step of a metrics.jsonl row, or None for a row torn by a killed process."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
