"""Where the work runs: the one place that picks the device and applies the CPU-only settings.

Every script calls :func:`use_device` once, before it builds a model or a graph. Importing ``ddpm_ms`` changes
nothing of MindSpore's; a notebook that wants the same settings calls ``ddpm_ms.use_device()`` itself.
"""
import os
import sys

import mindspore as ms

from .errors import ConfigError
from .paths import held_stderr
from .registries import DEVICES


def ensure_fast_cpu_settings():
    """Apply :func:`cpu_settings` when the device target is CPU: what a TrainStep or a Denoiser calls when it is
    built, so a notebook that never calls :func:`use_device` runs on the same settings as the commands. The
    environment variable is read when MindSpore first runs a graph; a user's own value is kept."""
    if ms.get_context("device_target") == "CPU":
        cpu_settings()


def cpu_settings():
    """The CPU-only settings, applied by :func:`use_device` when the target is CPU.

    ``MS_DEV_HOST_BLOCKING_RUN=1``: no busy-waiting host queue, which steals a core on small CPU machines
    (about 1.5-2x on 2 cores). MindSpore reads it when its runtime starts (the first op or graph): set later, it
    does nothing in this process, and one warning line says so. A value the user set is kept. The kernel library
    (:mod:`ddpm_ms.kernels`) needs nothing here: it is used only when the device target is CPU, and the oneDNN
    ISA cap is set only on its fallback path.
    """
    if "MS_DEV_HOST_BLOCKING_RUN" in os.environ:
        return
    if _runtime_started():
        print("warning: ddpm_ms: MindSpore ran an op before the fast CPU settings could apply, so this process "
              "trains and samples up to 2x slower; call ddpm_ms.use_device() (or set MS_DEV_HOST_BLOCKING_RUN=1) "
              "before the first MindSpore op, e.g. at the top of the notebook", file=sys.stderr, flush=True)
    os.environ["MS_DEV_HOST_BLOCKING_RUN"] = "1"   # once: no second warning; processes started later inherit it


def _runtime_started():
    """Whether MindSpore's CPU runtime has started (it has run an op), after which its environment is read."""
    try:
        from mindspore import hal  # pylint: disable=import-outside-toplevel
        return bool(hal.is_initialized("CPU"))
    except Exception:   # pylint: disable=broad-except  # a MindSpore without the call: assume not started
        return False


def available(target):
    """Whether this MindSpore build and machine can run on ``target`` (``mindspore.hal.is_available``).

    MindSpore reports a missing GPU or Ascend runtime with several lines on stderr; they are held back here, since
    the caller says it in one.
    """
    from mindspore import hal  # pylint: disable=import-outside-toplevel
    with held_stderr():
        return bool(hal.is_available(target))


def use_device(target="auto", device_id=None):
    """Run on ``target`` ("auto": MindSpore's default, "CPU", "GPU" or "Ascend"); returns the target in use.

    Applied through ``mindspore.set_device``; under msrun ``device_id`` None lets MindSpore give each rank its
    device. On CPU the :func:`cpu_settings` follow. Call it once, before any graph is built (and before
    ``ddpm_ms.distributed.setup``).
    """
    if target not in DEVICES:
        raise ConfigError(f"device {target!r} is not one of {', '.join(DEVICES)}")
    if target != "auto":
        if not available(target):
            raise ConfigError(f"device {target} is not available to this MindSpore ({ms.__version__}): install its "
                              f"{target} build and drivers, or choose --device auto")
        ms.set_device(target, device_id)
    actual = ms.get_context("device_target")
    if actual == "CPU":
        cpu_settings()
    return actual
