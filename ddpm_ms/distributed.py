"""Data-parallel training under MindSpore's own launcher, msrun.

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --join=True \\
        scripts/train.py --config configs/fashion_cpu.yaml

msrun runs the script in a scheduler process (MS_ROLE=MS_SCHED) and in each worker
(MS_ROLE=MS_WORKER); :func:`setup` joins the cluster in both, and switches on data
parallelism in the workers. The scheduler process exits once the cluster is done. Gradients are averaged by
``nn.DistributedGradReducer`` inside the compiled step (``set_auto_parallel_context``
alone does not average the grads of a ``value_and_grad`` step).
"""
import os
import sys

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
