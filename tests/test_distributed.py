"""Data parallel under msrun with 2 real CPU workers: ranks stay bit-identical, and their averaged gradient
is one process's gradient of the whole batch."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_YAML as TINY
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
COMMON = ["train.max_steps=4", "train.gif=false", "train.sample_num=2", "train.log_every=1", "data.num_samples=64"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _msrun():
    """The msrun launcher of this MindSpore, or skip."""
    msrun = shutil.which("msrun") or os.path.join(os.path.dirname(sys.executable), "msrun")
    if not os.path.exists(msrun):
        pytest.skip("msrun is not installed with this MindSpore")
    return msrun


def test_two_msrun_workers(data_dir, tmp_path):
    msrun = _msrun()
    dist, single = tmp_path / "dist", tmp_path / "single"
    # msrun starts workers with the `python` on PATH: make that this interpreter (the venv's)
    env = dict(os.environ, PYTHONPATH=ROOT,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}", "--join=True",
           f"--log_dir={tmp_path / 'logs'}", WORKER, TINY, str(dist), "train.batch_size=4", *COMMON]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path))
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log")) if (tmp_path / "logs").exists() else ""
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:], logs[-4000:])
    r0, r1 = np.load(dist / "params_rank0.npz"), np.load(dist / "params_rank1.npz")
    assert sorted(r0.files) == sorted(r1.files)
    for name in r0.files:
        np.testing.assert_array_equal(r0[name], r1[name], err_msg=name)
    assert (dist / "ckpt_step00000004.ckpt").is_file() and not (dist / "params_rank2.npz").exists()

    # the gradient all-reduced over 2 workers x 4 images equals one process's gradient of the same 8 images
    # (same data, t and noise): a mean over the workers, not a sum; that process then resumes the checkpoint the
    # 2 ranks wrote and trains one more step (a checkpoint written by 2 ranks resumes in 1 process)
    proc = subprocess.run([sys.executable, WORKER, TINY, str(single), "train.batch_size=8", *COMMON,
                           "train.max_steps=5", f"resume={dist / 'ckpt_step00000004.ckpt'}"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    g0, g1, g = (np.load(p) for p in (dist / "grads_rank0.npz", dist / "grads_rank1.npz", single / "grads_rank0.npz"))
    assert sorted(g0.files) == sorted(g.files) and len(g.files) > 10
    for name in g.files:
        np.testing.assert_array_equal(g0[name], g1[name], err_msg=name)       # every rank applies the same step
        np.testing.assert_allclose(g0[name], g[name], rtol=1e-4, atol=1e-6 * np.abs(g[name]).max(), err_msg=name)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rank": 0, "world": 1, "step": 5, "epoch": 0}
    assert (single / "ckpt_step00000005.ckpt").is_file() and not (single / "ckpt_step00000004.ckpt").exists()


def test_a_dead_rank_stops_the_others_and_the_job_resumes(data_dir, tmp_path):
    """SIGKILL rank 1 mid-run: rank 0 stops within a bounded time with one line (not a hang in a collective),
    and `--resume latest` under msrun continues the job to its end."""
    import signal
    import time
    msrun = _msrun()
    out, logs = tmp_path / "job", tmp_path / "logs"
    env = dict(os.environ, PYTHONPATH=ROOT,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    sets = [a for s in ("train.max_steps=12", "train.ckpt_every=4", "train.gif=false", "train.sample_num=2",
                        "train.log_every=1", "data.num_samples=64", "train.batch_size=4", f"train.out_dir={out}")
            for a in ("--set", s)]

    def job(*extra):
        return [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}", "--join=True",
                f"--log_dir={logs}", os.path.join(ROOT, "scripts", "train.py"), "--config", TINY, "--no-progress",
                *sets, *extra]

    proc = subprocess.Popen(job(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(tmp_path))
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob("ckpt_step*.ckpt")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    victim = int((out / ".rank1.alive").read_text())
    os.kill(victim, signal.SIGKILL)
    killed = time.time()
    stdout, stderr = proc.communicate(timeout=300)
    assert time.time() - killed < 120                                   # bounded, not a hang
    assert proc.returncode != 0
    log0 = (logs / "worker_0.log").read_text()
    stops = [l for l in log0.splitlines() if l.startswith("error: msrun rank 1 stopped")]
    # rank 0's PeerWatch (a check every 0.1 s) is normally first; msrun's own poll (once a second) SIGKILLs the
    # other workers when it sees the exit first, and says so: either way the job ends at once
    assert len(stops) == 1 or "exit with exception" in stdout + stderr, (log0[-3000:], stdout[-2000:], stderr[-2000:])
    if stops:
        assert "--resume latest" in stops[0] and "Traceback" not in log0.split(stops[0])[-1], log0[-3000:]
    shutil.move(str(logs), str(tmp_path / "logs_killed"))               # keep the first launch's logs
    resumed = subprocess.run(job("--resume", "latest"), capture_output=True, text=True, env=env, timeout=900,
                             cwd=str(tmp_path))
    assert resumed.returncode == 0, (logs / "worker_0.log").read_text()[-3000:]
    from ddpm_ms import checkpoint as ckpt
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(ckpt.list_checkpoints(str(out))[-1]))[0] == 12


def test_a_finished_rank_is_not_a_dead_one(tmp_path):
    """PeerWatch: a peer whose process has exited is dead, unless it marked its steps done first (rank 1 may end
    while rank 0 still writes its last checkpoint); a finished rank stops watching and beating."""
    from ddpm_ms.distributed import PeerWatch
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    watch0, watch1 = PeerWatch(str(tmp_path), 0, 2), PeerWatch(str(tmp_path), 1, 2)
    watch0.beat()
    watch1.beat()
    assert watch0.dead_peer() is None and watch1.dead_peer() is None
    (tmp_path / ".rank1.alive").write_text(gone.stdout.strip())          # rank 1's process is gone, mid-run
    assert watch0.dead_peer() == (1, f"process {gone.stdout.strip()} has exited")
    (tmp_path / ".rank1.alive").write_text(f"{gone.stdout.strip()} {PeerWatch.DONE}")   # gone after finishing
    assert watch0.dead_peer() is None
    watch0.finish()
    assert (tmp_path / ".rank0.alive").read_text() == f"{os.getpid()} {PeerWatch.DONE}"
    watch0.beat()                                                         # a late beat keeps the mark
    assert (tmp_path / ".rank0.alive").read_text().endswith(PeerWatch.DONE)


def test_the_watch_stops_its_rank_with_one_line(tmp_path, monkeypatch, capsys):
    """PeerWatch's thread body: a peer gone mid-run ends this rank with exit status 2 and one line naming the
    peer and the way to continue."""
    from ddpm_ms import distributed
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    watch = distributed.PeerWatch(str(tmp_path), 0, 2, check=0.01)
    (tmp_path / ".rank1.alive").write_text(gone.stdout.strip())

    def exit_(code):
        raise SystemExit(code)
    monkeypatch.setattr(distributed.os, "_exit", exit_)
    with pytest.raises(SystemExit) as stopped:
        watch._run()   # pylint: disable=protected-access
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: msrun rank 1 stopped (process {gone.stdout.strip()} has exited); stopping rank 0 "
                     "too; continue the job with --resume latest"]
    assert (tmp_path / ".rank0.alive").read_text() == str(os.getpid())   # it beat first
