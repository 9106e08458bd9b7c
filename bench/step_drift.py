"""Does this machine's speed drift over minutes? The fashion_cpu U-Net's compiled train step (B=16, one fixed
batch), 100 steps at a time, each followed by a fixed numpy probe (float32 matmuls), for --seconds.

    python bench/step_drift.py --seconds 150

Prints one line per round: seconds since the start, ms per train step, probe ms. A step time that rises while
the batch stays the same is the machine, not the training loop (a budgeted run's plan times its steps before it
fixes the step count, ddpm_ms.budget).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0)
    args = parser.parse_args()
    import mindspore as ms  # pylint: disable=import-outside-toplevel
    from mindspore import amp, nn  # pylint: disable=import-outside-toplevel
    import bench  # pylint: disable=import-outside-toplevel
    import ddpm_ms  # pylint: disable=import-outside-toplevel
    from ddpm_ms.batches import step_noise  # pylint: disable=import-outside-toplevel
    ms.set_seed(0)
    model = ddpm_ms.Unet(**bench.model_kwargs("fashion_cpu"))
    opt = nn.Adam(model.trainable_params(), learning_rate=1e-4)
    step = ddpm_ms.TrainStep(model, ddpm_ms.NoiseSchedule.from_name("cosine", 200), opt,
                             amp.DynamicLossScaler(65536, 2, 1000), "huber", jit=True)
    x0 = ms.Tensor(np.random.default_rng(0).uniform(-1, 1, (16, 1, 28, 28)).astype(np.float32))
    t, noise = step_noise(0, 0, x0.shape, 200)
    step(x0, t, noise)[0].asnumpy()          # compiles
    a = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)
    start = time.time()
    while time.time() - start < args.seconds:
        t0 = time.perf_counter()
        for _ in range(100):
            loss = step(x0, t, noise)[0]
        loss.asnumpy()
        ms_step = (time.perf_counter() - t0) * 10
        t0 = time.perf_counter()
        for _ in range(40):
            a @ a  # pylint: disable=pointless-statement
        print(f"{time.time() - start:6.1f} s  {ms_step:6.1f} ms/step  probe {(time.perf_counter() - t0) * 1e3:6.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
