"""MindIR export of a checkpoint's network, and loading it back as a network the samplers accept.

The exported graph is the denoising network alone: ``net(x [B,C,H,W] float32, t [B] int32[, y [B] int32])`` ->
its prediction [B,C,H,W], with the EMA weights (by default), for any batch size. A class-conditional network takes
the labels, with ``model.num_classes`` as the "no label" class that classifier-free guidance needs. Its config is
written beside it (``<name>.yaml``), so the schedule and the image shape travel with it.
"""
import os

import mindspore as ms
from mindspore import Tensor, nn

from . import kernels
from .build import build_schedule, load_model
from .config import load_config
from .errors import CheckpointError, ConfigError, first_line
from .paths import make_output_dir, written

SUFFIX = ".mindir"


def export_network(ckpt_path, out_path=None, use_ema=True):
    """Write the checkpoint's network as ``<out>.mindir`` and its config as ``<out>.yaml``; returns the .mindir path.

    ``out_path`` defaults to the checkpoint's path with ``.mindir``. The graph is built on MindSpore's own ops:
    the CPU kernel library is a shared object of this machine, which another runtime would not have.
    """
    with kernels.using("off"):
        model, _, cfg, _ = load_model(ckpt_path, use_ema=use_ema)
    base = os.path.splitext(out_path or ckpt_path)[0]
    make_output_dir(os.path.dirname(os.path.abspath(base)), "--out")
    size = cfg.data.image_size
    inputs = [Tensor(shape=[None, cfg.model.channels, size, size], dtype=ms.float32),
              Tensor(shape=[None], dtype=ms.int32)]
    if cfg.model.num_classes is not None:
        inputs.append(Tensor(shape=[None], dtype=ms.int32))
    with written(base + SUFFIX) as tmp:   # a full disk leaves no half-written .mindir
        ms.export(model, *inputs, file_name=tmp[:-len(SUFFIX)], file_format="MINDIR")
    cfg.dump(base + ".yaml")
    return base + SUFFIX


class ExportedNetwork:
    """An exported network, called like the model it came from: ``net(x, t[, y])`` -> [B,C,H,W] Tensor.

    It is a compiled graph already, so a :class:`~ddpm_ms.sampling.Denoiser` runs it as it is (``is_graph``).
    """
    is_graph = True

    def __init__(self, path):
        try:
            self.graph = nn.GraphCell(ms.load(path))
        except (RuntimeError, ValueError, OSError) as e:
            raise CheckpointError(f"cannot load the exported network {path}: {first_line(e)}") from None

    def __call__(self, x, t, *y):
        return self.graph(x, t, *y)


def load_exported(path):
    """(network, schedule, config) of a network written by :func:`export_network` (or ``ddpm-ms export``).

    Sample with it as with a trained model:
    ``generate(Denoiser.from_config(net, sched, cfg), shape, num)``.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"exported network not found: {path}")
    config = os.path.splitext(path)[0] + ".yaml"
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise CheckpointError(f"{path} needs its config beside it: {e}") from None
    return ExportedNetwork(path), build_schedule(cfg.diffusion), cfg
