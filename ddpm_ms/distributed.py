"""Data-parallel training under MindSpore's own launcher, msrun.

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --join=True \\
        scripts/train.py --config configs/fashion_cpu.yaml

msrun runs the script in a scheduler process (MS_ROLE=MS_SCHED) and in each worker
(MS_ROLE=MS_WORKER); :func:`setup` joins the cluster in both, and switches on data
parallelism in the workers. The scheduler process exits once the cluster is done. Gradients are averaged by
``nn.DistributedGradReducer`` inside the compiled step (``set_auto_parallel_context``
alone does not average the grads of a ``value_and_grad`` step). :class:`PeerWatch` stops the surviving ranks,
with one line, when one rank dies.
"""
import os
import sys
import threading
import time

import mindspore as ms


def launched_by_msrun():
    """True inside a process (scheduler or worker) started by msrun."""
    return os.environ.get("MS_ROLE") in ("MS_SCHED", "MS_WORKER")


def setup():
    """Join the msrun cluster if launched by it; returns (rank, world_size), (0, 1) otherwise."""
    if not launched_by_msrun():
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init  # pylint: disable=import-outside-toplevel
    init()
    if os.environ.get("MS_ROLE") == "MS_SCHED":   # the scheduler's work ends with the cluster
        sys.exit(0)
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


class PeerWatch:
    """Under msrun, stop this rank within a bounded time when another rank dies, instead of hanging in the next
    collective: every rank touches ``.rank<N>.alive`` (holding its pid) in ``folder`` every ``interval`` seconds,
    and a daemon thread looks at the others' every ``check`` seconds. When one's process is gone, or its heartbeat
    is older than ``timeout`` seconds, it prints one line and ends this process with exit status 2 (``--resume
    latest`` continues the job from the last checkpoint). On one machine msrun itself polls its workers once a
    second and SIGKILLs the rest when one exits with an error, so the check runs well inside that second (if msrun
    is first, the job still ends at once, with msrun's own message). A rank that has done all its steps calls
    :meth:`finish`: it stops watching, and the others do not take its exit for a death (it may end while rank 0
    still writes its last checkpoint and grids)."""

    DONE = "done"

    def __init__(self, folder, rank, world_size, timeout=30.0, interval=0.5, check=0.1):
        self.folder, self.rank, self.world_size = folder, rank, world_size
        self.timeout, self.interval, self.check = timeout, interval, check
        self._seen = {}
        self._started = time.time()
        self._finished = threading.Event()
        self._lock = threading.Lock()   # a beat never overwrites the mark of finish()

    def _path(self, rank):
        return os.path.join(self.folder, f".rank{rank}.alive")

    def beat(self, mark=""):
        """Touch this rank's heartbeat file (its pid, then ``mark``), atomically: a reader never sees it empty."""
        with self._lock:
            if self._finished.is_set():
                return
            path = self._path(self.rank)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {mark}".strip())
            os.replace(path + ".tmp", path)

    def finish(self):
        """This rank has done its last collective: mark its heartbeat file done and stop watching."""
        self.beat(self.DONE)
        self._finished.set()

    def dead_peer(self):
        """(rank, why) of a peer that has stopped, or None."""
        now = time.time()
        for rank in range(self.world_size):
            if rank == self.rank:
                continue
            try:
                with open(self._path(rank), encoding="utf-8") as f:
                    fields = f.read().split()
                pid = int(fields[0]) if fields else 0
                mtime = os.path.getmtime(self._path(rank))
            except (OSError, ValueError):
                if rank in self._seen:
                    return rank, f"its heartbeat file is gone (pid {self._seen[rank]})"
                continue   # not started yet
            if rank not in self._seen and mtime < self._started - 1.0:
                continue   # left by an earlier launch of the job: this launch's rank has not started yet
            age = now - mtime
            self._seen[rank] = pid
            if fields[1:] == [self.DONE]:
                continue   # it finished its steps: its exit is not a death
            if not _alive(pid):
                return rank, f"process {pid} has exited"
            if age > self.timeout:
                return rank, f"no heartbeat for {age:.0f} s (pid {pid})"
        return None

    def _run(self):
        beaten = 0.0
        while not self._finished.is_set():
            if time.time() - beaten >= self.interval:
                self.beat()
                beaten = time.time()
            dead = self.dead_peer()
            if dead is not None:
                print(f"error: msrun rank {dead[0]} stopped ({dead[1]}); stopping rank {self.rank} too; continue "
                      "the job with --resume latest", file=sys.stderr, flush=True)
                os._exit(2)   # pylint: disable=protected-access  # the main thread may be blocked in a collective
            time.sleep(self.check)

    def start(self):
        """Start watching (a daemon thread); returns self."""
        os.makedirs(self.folder, exist_ok=True)
        self.beat()
        threading.Thread(target=self._run, name="ddpm_ms-peer-watch", daemon=True).start()
        return self


def _alive(pid):
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
