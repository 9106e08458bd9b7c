"""Atomic, self-describing checkpoints.

A checkpoint holds the model parameters, the Adam state (moments, beta powers,
global_step), the loss-scaler state, the loop position and the resolved config
(as YAML text), so ``sample.py`` can rebuild the model from it alone and
``train.py --resume`` can continue exactly.
"""
import glob
import logging
import os
import re
from contextlib import contextmanager

import mindspore as ms
import yaml
from mindspore import Tensor
from mindspore import log as ms_log

from .config import ConfigError, from_dict
from .params import assign_parameters

PREFIX = "ckpt_step"
TMP_PREFIX = ".tmp-"
FORMAT = 1
_KEYS = ("ddpm_ms.format", "ddpm_ms.step", "ddpm_ms.epoch", "ddpm_ms.step_in_epoch")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit the model. The message is one line."""


def checkpoint_name(step):
    """File name of the checkpoint written after ``step`` optimizer steps."""
    return f"{PREFIX}{step:08d}.ckpt"


def list_checkpoints(folder):
    """Checkpoints in ``folder``, oldest first (temporary files excluded)."""
    files = glob.glob(os.path.join(folder, f"{PREFIX}*.ckpt"))
    return sorted(f for f in files if re.fullmatch(rf"{PREFIX}\d+\.ckpt", os.path.basename(f)))


def save_checkpoint(path, optimizer, cfg, loss_scaler, step, epoch, step_in_epoch, extra=None):
    """Write a checkpoint atomically: a temporary file in the same folder, fsync, then rename.

    ``extra`` maps more names to Parameters/Tensors (e.g. EMA weights). A crash or a failed write (a full
    disk) midway leaves any previous file at ``path`` untouched and no partial file; a failed write raises
    CheckpointError in one line.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")   # keeps the .ckpt suffix
    append = {
        "config": yaml.safe_dump(cfg.to_dict(), sort_keys=False),
        "ddpm_ms.format": FORMAT,
        "ddpm_ms.step": int(step),
        "ddpm_ms.epoch": int(epoch),
        "ddpm_ms.step_in_epoch": int(step_in_epoch),
        "loss_scaler.scale_value": Tensor(loss_scaler.scale_value.asnumpy()),
        "loss_scaler.counter": Tensor(loss_scaler.counter.asnumpy()),
    }
    for name, value in (extra or {}).items():
        append[name] = Tensor(value.asnumpy())
    try:
        with _mindspore_log_silenced():   # it logs a multi-line CRITICAL before re-raising a failed write
            ms.save_checkpoint(optimizer, tmp, append_dict=append)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; "
                              "the checkpoints written before are untouched") from None
    finally:
        for leftover in (tmp, os.path.splitext(tmp)[0] + ".tmp"):   # ours, and MindSpore's own temporary
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


@contextmanager
def _mindspore_log_silenced():
    logger = ms_log._get_logger()  # pylint: disable=protected-access
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def remove_stale_temporaries(folder):
    """Delete the temporary files of checkpoint writes that a killed process never finished."""
    for leftover in glob.glob(os.path.join(folder, f"{TMP_PREFIX}*")):
        os.remove(leftover)


def checkpoint_step(path):
    """The step number in a checkpoint's file name."""
    return int(os.path.basename(path)[len(PREFIX):-len(".ckpt")])


def prune_checkpoints(paths, keep_last):
    """Delete all but the last ``keep_last`` of ``paths`` (one run's checkpoints, oldest first); return the kept."""
    for old in paths[:-keep_last]:
        if os.path.exists(old):
            os.remove(old)
    return paths[-keep_last:]


def resolve_checkpoint(spec, folder=None):
    """'latest' -> newest checkpoint in ``folder``; a path -> itself if it exists."""
    if spec == "latest":
        found = list_checkpoints(folder) if folder else []
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {folder}")
        return found[-1]
    if not os.path.isfile(spec):
        raise CheckpointError(f"checkpoint not found: {spec}")
    return spec


def read_checkpoint(path):
    """Load a checkpoint file into a dict; CheckpointError if missing, corrupt or not a ddpm_ms checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = ms.load_checkpoint(path)
    except Exception as e:  # pylint: disable=broad-except  # MindSpore raises several types here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {first}") from None
    missing = [k for k in ("config",) + _KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path} is not a ddpm_ms checkpoint (missing {', '.join(missing)})")
    return data


def checkpoint_config(data, path="checkpoint"):
    """The Config stored in a checkpoint dict."""
    try:
        return from_dict(yaml.safe_load(data["config"]))
    except (ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {str(e).splitlines()[0]}") from None


def checkpoint_position(data):
    """(step, epoch, step_in_epoch) stored in a checkpoint dict."""
    return tuple(int(data[k].asnumpy()) for k in _KEYS[1:])


def check_compatible(model, data, path="checkpoint"):
    """Raise CheckpointError naming the parameters whose presence or shape differ."""
    problems = []
    for p in model.trainable_params():
        if p.name not in data:
            problems.append(f"{p.name} missing")
        elif tuple(data[p.name].shape) != tuple(p.shape):
            problems.append(f"{p.name} {tuple(data[p.name].shape)} in checkpoint vs {tuple(p.shape)} in model")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"{path} does not match this architecture: {shown}")


def load_model_weights(model, data, path="checkpoint", prefix=""):
    """Copy weights named ``prefix + param.name`` from a checkpoint dict into ``model`` (in place)."""
    check_compatible(model, {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}, path)
    assign_parameters((p, data[prefix + p.name]) for p in model.trainable_params())


def restore_training(data, model, optimizer, loss_scaler, path="checkpoint", ema=None):
    """Restore model, optimizer, loss-scaler and EMA state; returns (step, epoch, step_in_epoch)."""
    load_model_weights(model, data, path)
    if ema is not None:
        try:
            ema.load(data)
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}; resume with ema.enabled=false") from None
    # Adam moments, beta powers and global_step; the LR list is rebuilt from the config (its length
    # depends on the steps per epoch, which change with the number of msrun workers)
    assign_parameters((p, data[p.name]) for _, p in optimizer.parameters_and_names()
                      if p.name in data and p.name != "learning_rate")
    assign_parameters([(loss_scaler.scale_value, data["loss_scaler.scale_value"]),
                       (loss_scaler.counter, data["loss_scaler.counter"])])
    return checkpoint_position(data)


def load_model(path, use_ema=True):
    """Rebuild the model a checkpoint was trained with and load its weights (EMA ones if stored and wanted).

    Returns (model, schedule, config, raw checkpoint dict); no architecture flags needed.
    """
    from .trainer import build_model, build_schedule  # pylint: disable=import-outside-toplevel
    from .ema import PREFIX  # pylint: disable=import-outside-toplevel
    data = read_checkpoint(path)
    cfg = checkpoint_config(data, path)
    model = build_model(cfg.model)
    has_ema = any(k.startswith(PREFIX) for k in data)
    load_model_weights(model, data, path, prefix=PREFIX if use_ema and has_ema else "")
    model.set_train(False)
    return model, build_schedule(cfg.diffusion), cfg, data
