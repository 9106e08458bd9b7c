#!/usr/bin/env python
"""Fault injection: kill or interrupt training in every phase, resume each time, and prove nothing was lost or changed.

Used by tests/test_faults.py (a few kills) and bench/faults.py (the long variant, whose table goes into
BENCHMARKS.md). It trains configs/tiny.yaml on the shared data ($DDPM_MS_DATA_DIR):

  1. once straight through (the reference);
  2. again in another folder, killed with SIGKILL again and again: at a random moment after the process has
     logged its first step, or while a checkpoint is being written (each write is held open for a moment between
     the temporary file and the rename); or killed (SIGKILL) or interrupted (SIGTERM, SIGINT) inside a phase:
     a checkpoint write, an evaluation, a best.ckpt write, a preview grid, the final samples, or the resume itself
     (each phase is held open for a moment, announced by a marker file or, for a write, its temporary file).
     After each kill every checkpoint on disk is read back in full and the run is resumed with --resume latest
     (or restarted with --overwrite when there is none);
  3. compares the final checkpoint and best.ckpt with the reference's, tensor by tensor (weights, Adam moments
     and beta powers, EMA weights and count, loss-scaler state, position), and the metrics rows (losses and FD
     rows, all but the timings) row by row;
  4. makes the second checkpoint write of a fresh run fail halfway with ENOSPC and checks that the error is
     one line, the first checkpoint survives intact, and no temporary file is left.

``python tests/fault_harness.py --child ...`` is the faulty trainer itself: scripts/train.py with
mindspore.save_checkpoint wrapped (DDPM_MS_FAULT_SLOW_WRITE=S, DDPM_MS_FAULT_ENOSPC_AT=N) and one phase held
open (DDPM_MS_FAULT_PHASE=write|eval|best|grid|final|resume, DDPM_MS_FAULT_HOLD=S).
"""
import errno
import glob
import json
import os
import random
import runpy
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
RUN = ("train.ckpt_every=4", "train.keep_last=2", "train.log_every=1", "train.gif=false", "train.sample_num=4",
       "train.sample_sampler=ddim", "train.sample_steps=3")
EVAL = ("train.eval_every=1", "train.eval_num=16")   # an evaluation (and best.ckpt) after every epoch
EPOCHS = 5   # of 8 steps: 40 steps, 10 checkpoint writes, 5 preview grids
PHASES = ("write", "eval", "best", "grid", "final", "resume")   # SIGKILL, SIGTERM, SIGINT in turn
TIMING = ("img_per_s", "wall_s", "eval_s")           # the metrics fields that are times, not results


def _hold_phase(phase, seconds):
    """Announce ``phase`` with a marker file in the run folder and hold it open for ``seconds`` when it runs."""
    from ddpm_ms import callbacks, trainer  # pylint: disable=import-outside-toplevel
    targets = {"eval": (callbacks.Evaluation, "evaluate"), "grid": (callbacks.PreviewGrids, "on_epoch_end"),
               "final": (callbacks.PreviewGrids, "on_end"), "resume": (trainer.Trainer, "resume")}
    if phase not in targets:
        return
    cls, name = targets[phase]
    original = getattr(cls, name)

    def held(self, trainer_or_spec, *args):
        folder = (trainer_or_spec.folder if phase != "resume" else self.folder).path
        open(os.path.join(folder, f".fault-{phase}"), "w", encoding="utf-8").close()
        time.sleep(seconds)
        return original(self, trainer_or_spec, *args)

    setattr(cls, name, held)


def child(argv):
    """scripts/train.py with faulty checkpoint writes and one phase held open, configured by the environment."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    slow = float(os.environ.get("DDPM_MS_FAULT_SLOW_WRITE", "0"))
    enospc_at = int(os.environ.get("DDPM_MS_FAULT_ENOSPC_AT", "0"))
    phase, hold = os.environ.get("DDPM_MS_FAULT_PHASE", ""), float(os.environ.get("DDPM_MS_FAULT_HOLD", "1"))
    slow = hold if phase == "write" else slow   # every checkpoint write held open between temporary and rename
    original, writes = ms.save_checkpoint, [0]

    def faulty_save(obj, file_name, **kwargs):
        writes[0] += 1
        original(obj, file_name, **kwargs)
        if writes[0] == enospc_at:    # the disk fills up halfway through this file
            with open(file_name, "r+b") as f:
                f.truncate(os.path.getsize(file_name) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file_name)
        if phase == "best" and "best.ckpt" in os.path.basename(file_name):
            open(os.path.join(os.path.dirname(file_name), ".fault-best"), "w", encoding="utf-8").close()
            time.sleep(hold)          # best.ckpt's temporary is written, the rename has not happened yet
        time.sleep(slow)              # the temporary file is complete, the rename has not happened yet

    _hold_phase(phase, hold)

    ms.save_checkpoint = faulty_save
    sys.argv = [os.path.join(ROOT, "scripts", "train.py")] + argv
    runpy.run_path(sys.argv[0], run_name="__main__")


def train_command(out, *extra, epochs=EPOCHS, evaluate=False):
    """The faulty trainer's command line for the tiny run of ``epochs`` epochs into ``out`` (``evaluate``: with an
    FD evaluation and best.ckpt after every epoch)."""
    settings = RUN + (EVAL if evaluate else ()) + (f"train.out_dir={out}", f"train.epochs={epochs}")
    sets = [a for s in settings for a in ("--set", s)]
    return [sys.executable, os.path.abspath(__file__), "--child", "--config", TINY, "--no-progress", *sets, *extra]


def launch(out, env=None, epochs=EPOCHS, evaluate=False):
    """Start (or continue) the run in ``out`` in a subprocess."""
    from ddpm_ms.checkpoint import list_checkpoints  # pylint: disable=import-outside-toplevel
    extra = ["--resume", "latest"] if os.path.isdir(out) and list_checkpoints(out) else ["--overwrite"]
    return subprocess.Popen(train_command(out, *extra, epochs=epochs, evaluate=evaluate),
                            env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def rows(out):
    """metrics.jsonl rows that parse (a kill can tear the last one)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.endswith("\n"))


def writing(out):
    """A checkpoint write is in progress (its temporary file exists)."""
    return bool(glob.glob(os.path.join(out, ".tmp-*")))


def wait_for(cond, proc, timeout=300):
    """Poll ``cond()`` every 5 ms until it holds or ``proc`` exits; True if it held with ``proc`` alive."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.005)
    return False


def verify_checkpoints(out):
    """Read back every checkpoint in ``out`` in full; returns how many (any unreadable one raises)."""
    from ddpm_ms import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    files = ckpt.list_checkpoints(out)
    for path in files:
        step = ckpt.checkpoint_position(ckpt.read_checkpoint(path))[0]
        assert step == ckpt.checkpoint_step(path), f"{path} holds step {step}"
    return len(files)


def kill_and_resume(out, kills, seed=0, slow_write=0.3, max_delay=2.0, epochs=EPOCHS):
    """SIGKILL the run in ``out`` ``kills`` times (every third one during a checkpoint write), resuming after
    each, then let it finish. Returns counts: kills, during_write, checkpoints_verified, launches."""
    rng = random.Random(seed)
    env = {"DDPM_MS_FAULT_SLOW_WRITE": str(slow_write)}
    stats = {"kills": 0, "during_write": 0, "checkpoints_verified": 0, "launches": 0}
    while stats["kills"] < kills:
        mid_write = stats["kills"] % 3 == 1
        proc = launch(out, env, epochs)
        stats["launches"] += 1
        start_rows = rows(out)
        if mid_write:
            alive = wait_for(lambda: writing(out), proc)
        else:   # a random moment once this process is training (its first logged step)
            alive = wait_for(lambda: rows(out) > start_rows, proc) and not time.sleep(rng.uniform(0, max_delay))
        if proc.poll() is None and alive:
            in_write = writing(out)
            proc.kill()
            stats["kills"] += 1
            stats["during_write"] += int(in_write)
        _, err = proc.communicate()
        if proc.returncode not in (0, -9):
            raise RuntimeError(f"faulty run failed ({proc.returncode}): {err[-2000:]}")
        stats["checkpoints_verified"] += verify_checkpoints(out)
        if proc.returncode == 0:
            raise RuntimeError("the run finished before all kills: give it more epochs")
    return _finish_run(out, stats, epochs)


def _finish_run(out, stats, epochs, evaluate=False):
    """Resume the faulted run to its end, unfaulted; read every checkpoint back; returns ``stats`` updated."""
    proc = launch(out, epochs=epochs, evaluate=evaluate)
    stats["launches"] += 1
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the final resume failed: {err[-2000:]}")
    stats["checkpoints_verified"] += verify_checkpoints(out)
    return stats


SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def kill_in_phases(out, phases=PHASES, signals=SIGNALS, epochs=EPOCHS, hold=1.0):
    """For each phase in turn: launch (or resume) the evaluated run, send the next of ``signals`` while the phase
    runs, read every checkpoint back; then let the run finish. Returns counts per phase and totals."""
    stats = {"kills": 0, "sent": [], "checkpoints_verified": 0, "launches": 0}
    for i, phase in enumerate(phases):
        sig = signals[i % len(signals)]
        marker = os.path.join(out, f".fault-{phase}")
        if os.path.exists(marker):
            os.remove(marker)
        proc = launch(out, {"DDPM_MS_FAULT_PHASE": phase, "DDPM_MS_FAULT_HOLD": str(hold)}, epochs, evaluate=True)
        stats["launches"] += 1
        running = (lambda: writing(out)) if phase == "write" else (lambda m=marker: os.path.exists(m))
        if wait_for(running, proc):
            time.sleep(hold / 3)
            proc.send_signal(sig)
            stats["kills"] += 1
            stats["sent"].append((phase, signal.Signals(sig).name))
        _, err = proc.communicate()
        if not stats["sent"] or stats["sent"][-1][0] != phase or len(stats["sent"]) != i + 1:
            raise RuntimeError(f"phase {phase} never ran ({proc.returncode}): {err[-2000:]}")
        if "Traceback" in err:
            raise RuntimeError(f"{signal.Signals(sig).name} during {phase} gave a traceback: {err[-2000:]}")
        stats["checkpoints_verified"] += verify_checkpoints(out)
    return _finish_run(out, stats, epochs, evaluate=True)


def reference_run(out, epochs=EPOCHS, evaluate=False):
    """The run straight through, no faults."""
    proc = subprocess.run(train_command(out, "--overwrite", epochs=epochs, evaluate=evaluate), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])


def _tensor_differences(path_a, path_b, prefix=""):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from ddpm_ms import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    a, b = ckpt.read_checkpoint(path_a), ckpt.read_checkpoint(path_b)
    diff = sorted(set(a) ^ set(b))
    diff += [k for k in sorted(set(a) & set(b)) if k != "config" and not np.array_equal(
        np.asarray(a[k].asnumpy() if hasattr(a[k], "asnumpy") else a[k]),
        np.asarray(b[k].asnumpy() if hasattr(b[k], "asnumpy") else b[k]))]
    return [prefix + k for k in diff], len(a)


def metrics_rows(out):
    """The metrics rows of a run, without the fields that are timings."""
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def differences(out_a, out_b):
    """Names of what is not bit-identical between two runs: final-checkpoint tensors, best.ckpt's tensors (when
    the runs kept one) and metrics rows. Returns (names, tensors compared in the final checkpoint)."""
    from ddpm_ms import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    diff, compared = _tensor_differences(ckpt.list_checkpoints(out_a)[-1], ckpt.list_checkpoints(out_b)[-1])
    bests = [os.path.join(o, "best.ckpt") for o in (out_a, out_b)]
    if any(os.path.exists(p) for p in bests):
        diff += (_tensor_differences(*bests, prefix="best.ckpt:")[0] if all(os.path.exists(p) for p in bests)
                 else ["best.ckpt missing"])
    rows_a, rows_b = metrics_rows(out_a), metrics_rows(out_b)
    if rows_a != rows_b:
        diff.append(f"metrics.jsonl rows ({len(rows_a)} vs {len(rows_b)})")
    return diff, compared


def enospc_run(out):
    """A fresh run whose 2nd checkpoint write hits ENOSPC: (returncode, stderr lines, surviving checkpoints)."""
    proc = launch(out, {"DDPM_MS_FAULT_ENOSPC_AT": "2"})
    _, err = proc.communicate()
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("[WARNING")]
    return proc.returncode, lines, [os.path.basename(p) for p in glob.glob(os.path.join(out, "*ckpt*"))]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
