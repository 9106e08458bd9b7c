"""One folder, one run: the lock a run holds on train.out_dir, and what it refuses."""
import json
import os
import subprocess
import sys
import time

import pytest

from ddpm_ms.errors import RunLocked
from ddpm_ms.run_folder import LOCK, lock_folder, unlock_folder

from cli_batch import assert_one_line_error
from conftest import ROOT, TINY_YAML

HOLD = ("import sys, time\nfrom ddpm_ms.run_folder import lock_folder\nlock_folder(sys.argv[1])\n"
        "print('locked', flush=True)\ntime.sleep(60)\n")


def _holder(folder):
    """A process that holds the folder's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_folder_is_refused_naming_the_process(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLocked, match=f"{tmp_path} is in use by another run .process {holder.pid}."):
            lock_folder(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    lock_folder(str(tmp_path))          # the OS released the killed process's lock: no stale lock
    assert open(tmp_path / LOCK).read() == str(os.getpid())
    lock_folder(str(tmp_path))          # this process holds it already
    unlock_folder(str(tmp_path))


@pytest.mark.parametrize("flags", [[], ["--resume", "latest"], ["--overwrite"]])
def test_second_train_into_a_running_folder_stops_at_once(data_dir, tmp_path, flags):
    """Whatever its flags, a train into a folder another process is training into stops in one line, and
    touches nothing there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 0.5}\n')
    holder = _holder(out)
    try:
        start = time.time()
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", TINY_YAML,
                               "--set", f"train.out_dir={out}", "--no-progress", *flags],
                              capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, str(out), "in use by another run", f"process {holder.pid}")
        assert time.time() - start < 60
        assert (out / "metrics.jsonl").read_text() == '{"step": 2, "loss": 0.5}\n'
        assert sorted(os.listdir(out)) == [LOCK, "metrics.jsonl"]
    finally:
        holder.kill()
        holder.wait()


def test_two_runs_started_together_one_trains(data_dir, tmp_path):
    """Started at the same moment into one folder: exactly one trains, the other stops with one line."""
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config", TINY_YAML, "--no-progress",
           "--set", f"train.out_dir={out}", "--set", "train.max_steps=4", "--set", "train.gif=false",
           "--set", "train.sample_num=2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], [r[1][-1500:] for r in results]
    refused = next(r for r in results if r[2] == 2)
    assert "in use by another run" in refused[1] or "already holds a run" in refused[1]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [2, 4]   # one run's rows, not two runs' mixed
