"""One msrun worker for tests/test_distributed.py: train a few steps, dump this rank's parameters and losses."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddpm_ms.config import load_config  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.distributed import setup  # noqa: E402  pylint: disable=wrong-import-position
from ddpm_ms.loop import Trainer  # noqa: E402  pylint: disable=wrong-import-position


def main(config, out, *overrides):
    rank, world = setup()
    cfg = load_config(config, [f"train.out_dir={out}", *overrides])
    trainer = Trainer(cfg, rank=rank, world_size=world)
    summary = trainer.fit(progress=False)
    np.savez(os.path.join(out, f"params_rank{rank}.npz"),
             **{p.name: p.asnumpy() for p in trainer.run.model.trainable_params()})
    print(f"rank {rank}/{world}: {summary}")


if __name__ == "__main__":
    main(*sys.argv[1:])
