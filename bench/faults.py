#!/usr/bin/env python
"""Fault injection: SIGKILL training at random moments, resume each time, and prove nothing was lost or changed.

    python bench/faults.py --kills 25 --epochs 40   # the long variant; its table goes into BENCHMARKS.md
    (tests/test_faults.py runs the same harness with 5 kills)

It trains configs/tiny.yaml on the shared data ($DDPM_MS_DATA_DIR):
  1. once straight through (the reference);
  2. again in another folder, killed with SIGKILL again and again: at a random moment after the process has
     logged its first step, or while a checkpoint is being written (each write is held open for --slow-write
     seconds between the temporary file and the rename); after each kill every checkpoint on disk is read
     back in full, and the run is resumed with --resume latest (or restarted with --overwrite when no
     checkpoint exists yet);
  3. compares the final checkpoint with the reference's, tensor by tensor (weights, Adam moments and beta
     powers, EMA weights and count, loss-scaler state, position), and the logged losses row by row;
  4. makes the second checkpoint write of a fresh run fail halfway with ENOSPC and checks that the error is
     one line, the first checkpoint survives intact, and no temporary file is left.

``python bench/faults.py --child ...`` is the faulty trainer itself: scripts/train.py with
mindspore.save_checkpoint wrapped (DDPM_MS_FAULT_SLOW_WRITE=S, DDPM_MS_FAULT_ENOSPC_AT=N).
"""
import argparse
import errno
import glob
import json
import os
import random
import runpy
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

TINY = os.path.join(ROOT, "configs", "tiny.yaml")
RUN = ("train.ckpt_every=4", "train.keep_last=2", "train.log_every=1", "train.gif=false", "train.sample_num=4")
EPOCHS = 5   # of 8 steps: 40 steps, 10 checkpoint writes, 5 preview grids


def child(argv):
    """scripts/train.py with faulty checkpoint writes, configured by the environment."""
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    slow = float(os.environ.get("DDPM_MS_FAULT_SLOW_WRITE", "0"))
    enospc_at = int(os.environ.get("DDPM_MS_FAULT_ENOSPC_AT", "0"))
    original, writes = ms.save_checkpoint, [0]

    def faulty_save(obj, file_name, **kwargs):
        writes[0] += 1
        original(obj, file_name, **kwargs)
        if writes[0] == enospc_at:    # the disk fills up halfway through this file
            with open(file_name, "r+b") as f:
                f.truncate(os.path.getsize(file_name) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file_name)
        time.sleep(slow)              # the temporary file is complete, the rename has not happened yet

    ms.save_checkpoint = faulty_save
    sys.argv = [os.path.join(ROOT, "scripts", "train.py")] + argv
    runpy.run_path(sys.argv[0], run_name="__main__")


def train_command(out, *extra, epochs=EPOCHS):
    """The faulty trainer's command line for the tiny run of ``epochs`` epochs into ``out``."""
    sets = [a for s in RUN + (f"train.out_dir={out}", f"train.epochs={epochs}") for a in ("--set", s)]
    return [sys.executable, os.path.abspath(__file__), "--child", "--config", TINY, "--no-progress", *sets, *extra]


def launch(out, env=None, epochs=EPOCHS):
    """Start (or continue) the run in ``out`` in a subprocess."""
    from ddpm_ms.checkpoint import list_checkpoints  # pylint: disable=import-outside-toplevel
    extra = ["--resume", "latest"] if list_checkpoints(out) else ["--overwrite"]
    return subprocess.Popen(train_command(out, *extra, epochs=epochs), env=dict(os.environ, **(env or {})),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


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
    proc = launch(out, epochs=epochs)
    stats["launches"] += 1
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the final resume failed: {err[-2000:]}")
    stats["checkpoints_verified"] += verify_checkpoints(out)
    return stats


def reference_run(out, epochs=EPOCHS):
    """The run straight through, no faults."""
    proc = subprocess.run(train_command(out, "--overwrite", epochs=epochs), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])


def differences(out_a, out_b):
    """Names of the final-checkpoint tensors and logged losses that are not bit-identical between two runs."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from ddpm_ms import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
    a, b = (ckpt.read_checkpoint(ckpt.list_checkpoints(o)[-1]) for o in (out_a, out_b))
    diff = sorted(set(a) ^ set(b))
    diff += [k for k in sorted(set(a) & set(b)) if k != "config" and not np.array_equal(
        np.asarray(a[k].asnumpy() if hasattr(a[k], "asnumpy") else a[k]),
        np.asarray(b[k].asnumpy() if hasattr(b[k], "asnumpy") else b[k]))]
    losses = []
    for out in (out_a, out_b):
        with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
            losses.append([(r["step"], r["loss"]) for r in map(json.loads, f)])
    if losses[0] != losses[1]:
        diff.append("metrics.jsonl losses")
    return diff, len(a)


def enospc_run(out):
    """A fresh run whose 2nd checkpoint write hits ENOSPC: (returncode, stderr lines, surviving checkpoints)."""
    proc = launch(out, {"DDPM_MS_FAULT_ENOSPC_AT": "2"})
    _, err = proc.communicate()
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("[WARNING")]
    return proc.returncode, lines, [os.path.basename(p) for p in glob.glob(os.path.join(out, "*ckpt*"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--epochs", type=int, default=40, help="length of the tiny run (8 steps each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/ddpm_ms_faults", help="scratch folder (emptied)")
    args = parser.parse_args()
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(args.work, ignore_errors=True)
    ref, faulty, full = (os.path.join(args.work, n) for n in ("reference", "killed", "enospc"))
    start = time.time()
    reference_run(ref, args.epochs)
    stats = kill_and_resume(faulty, args.kills, seed=args.seed, epochs=args.epochs)
    diff, compared = differences(ref, faulty)
    code, lines, left = enospc_run(full)
    print("| kills (SIGKILL) | during a checkpoint write | launches | checkpoint reads verified | "
          "final tensors compared | not bit-identical | ENOSPC: exit, stderr lines, files left |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {stats['kills']} | {stats['during_write']} | {stats['launches']} | {stats['checkpoints_verified']} | "
          f"{compared - 1} | {len(diff)}{' ' + ', '.join(diff) if diff else ''} | {code}, {len(lines)}, "
          f"{' '.join(sorted(left))} |")
    print(f"\nENOSPC error: {lines[0] if lines else '(none)'}")
    print(f"{time.time() - start:.0f} s")
    return 0 if not diff and code == 2 and len(lines) == 1 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        sys.exit(main())
