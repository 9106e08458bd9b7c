"""One msrun worker for tests/test_distributed.py.

Before training it dumps the gradient that the train step would apply for this rank's share of one fixed global
batch (the first ``batch_size x world`` images, with fixed t and noise); then it trains a few steps and dumps
this rank's parameters. An argument ``resume=PATH`` continues from that checkpoint after the dump (as
``--resume PATH`` would) instead of training from the start.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.config import load_config  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.distributed import setup  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.data import load_fashion_arrays  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.trainer import Trainer  # noqa: E402  pylint: disable=wrong-import-position


def dump_gradients(trainer, rank, world, path):
    """This rank's share of a fixed global batch through ``TrainStep.gradients`` (all-reduced under msrun)."""
    per = trainer.config.train.batch_size
    images, _ = load_fashion_arrays(os.environ["DDPM_MS_DATA_DIR"], count=per * world)
    rng = np.random.default_rng(7)
    x0 = images[:, None].astype(np.float32) / 127.5 - 1.0
    t = rng.integers(0, trainer.run.sched.num_timesteps, len(x0)).astype(np.int32)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)
    mine = slice(rank * per, (rank + 1) * per)
    loss, grads = trainer.run.train_step.gradients(*(ms.Tensor(a[mine]) for a in (x0, t, noise)))
    names = [p.name for p in trainer.run.optimizer.parameters]
    np.savez(path, loss=loss.asnumpy(), **{n: g.asnumpy() for n, g in zip(names, grads)})


def main(config, out, *overrides):
    rank, world = setup()
    resume = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    cfg = load_config(config, [f"train.out_dir={out}", *(o for o in overrides if not o.startswith("resume="))])
    trainer = Trainer.from_config(cfg, rank=rank, world_size=world)
    dump_gradients(trainer, rank, world, os.path.join(out, f"grads_rank{rank}.npz"))
    if resume:
        trainer.resume(resume[0])
    summary = trainer.fit(progress=False)
    np.savez(os.path.join(out, f"params_rank{rank}.npz"),
             **{p.name: p.asnumpy() for p in trainer.run.model.trainable_params()})
    print(json.dumps({"rank": rank, "world": world, "step": summary["step"], "epoch": summary["epoch"]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
