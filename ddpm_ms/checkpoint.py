"""Atomic, self-describing, CRC-checked checkpoint files: reading and writing only.

A checkpoint holds a :class:`TrainingState` whole: the model parameters, the Adam state (moments, beta powers,
global_step), the loss-scaler state, the EMA weights, the loop position and the resolved config (as YAML text),
so a model can be rebuilt from it alone (:func:`ddpm_ms.build.load_model`) and a run continued exactly. Every file
carries MindSpore's CRC32 (``crc_check``), so a flipped byte is an error naming the file, not other weights.
"""
import glob
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import mindspore as ms
import yaml
from mindspore import Tensor

from .config import Config, from_dict
from .ema import PREFIX as EMA_PREFIX
from .errors import CheckpointError, ConfigError, first_line
from .params import assign_parameters
from .paths import TMP_PREFIX, held_stderr

PREFIX = "ckpt_step"
FORMAT = 1
_POSITION = ("ddpm_ms.step", "ddpm_ms.epoch", "ddpm_ms.step_in_epoch")
_KEYS = ("ddpm_ms.format",) + _POSITION

__all__ = ["CheckpointError", "TrainingState", "save_state", "restore_state", "read_checkpoint", "checkpoint_config",
           "checkpoint_name", "checkpoint_step", "list_checkpoints", "resolve_checkpoint", "read_resumable", "prune_checkpoints",
           "load_model_weights", "check_compatible", "remove_stale_temporaries"]


@dataclass
class TrainingState:
    """Everything a checkpoint saves and a resume restores: the parts that change as a run trains, and where it is.

    ``step``: optimizer steps done; ``epoch``; ``step_in_epoch``: batches of that epoch consumed;
    ``metrics_rows``: rows in the run's metrics.jsonl when it was saved (a resume drops the later ones, which it
    replays). ``ema`` may be None.
    """
    config: Config
    model: Any
    optimizer: Any
    loss_scaler: Any
    ema: Optional[Any] = None
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    metrics_rows: Optional[int] = None


def checkpoint_name(step):
    """File name of the checkpoint written after ``step`` optimizer steps."""
    return f"{PREFIX}{step:08d}.ckpt"


def checkpoint_step(path):
    """The step number in a checkpoint's file name."""
    return int(os.path.basename(path)[len(PREFIX):-len(".ckpt")])


def list_checkpoints(folder):
    """Checkpoints in ``folder``, oldest first (temporary files excluded)."""
    files = glob.glob(os.path.join(folder, f"{PREFIX}*.ckpt"))
    return sorted(f for f in files if re.fullmatch(rf"{PREFIX}\d+\.ckpt", os.path.basename(f)))


def save_state(path, state):
    """Write ``state`` (a :class:`TrainingState`) to ``path`` atomically: a temporary file in the same folder, fsync,
    then rename. A crash or a failed write (a full disk) midway leaves any previous file at ``path`` untouched and
    no partial file; a failed write raises CheckpointError in one line. Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}")   # keeps the .ckpt suffix
    scaler = state.loss_scaler
    append = {
        "config": yaml.safe_dump(state.config.to_dict(), sort_keys=False),
        "ddpm_ms.format": FORMAT,
        "ddpm_ms.step": int(state.step),
        "ddpm_ms.epoch": int(state.epoch),
        "ddpm_ms.step_in_epoch": int(state.step_in_epoch),
        "ddpm_ms.metrics_rows": int(state.metrics_rows or 0),
        "loss_scaler.scale_value": Tensor(scaler.scale_value.asnumpy()),
        "loss_scaler.counter": Tensor(scaler.counter.asnumpy()),
    }
    for name, value in (state.ema.state() if state.ema is not None else {}).items():
        append[name] = Tensor(value.asnumpy())
    try:
        with held_stderr():   # MindSpore prints a multi-line CRITICAL before re-raising a failed write
            ms.save_checkpoint(state.optimizer, tmp, append_dict=append, crc_check=True)
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


def remove_stale_temporaries(folder):
    """Delete the temporary files of checkpoint writes that a killed process never finished."""
    for leftover in glob.glob(os.path.join(folder, f"{TMP_PREFIX}*")):
        os.remove(leftover)


def prune_checkpoints(paths, keep_last):
    """Delete all but the last ``keep_last`` of ``paths`` (one run's checkpoints, oldest first); return the kept."""
    for old in paths[:-keep_last]:
        if os.path.exists(old):
            os.remove(old)
    return paths[-keep_last:]


def resolve_checkpoint(spec, folder=None):
    """'latest' -> the newest checkpoint in ``folder``; a path -> itself if it exists."""
    if spec == "latest":
        found = list_checkpoints(folder) if folder else []
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {folder}")
        return found[-1]
    if not os.path.isfile(spec):
        raise CheckpointError(f"checkpoint not found: {spec}")
    return spec


def read_resumable(spec, folder, warn=print):
    """(path, checkpoint dict) to resume from: ``spec`` a path, or "latest": the newest checkpoint in ``folder``
    that passes its integrity check. Each newer one that fails is skipped with one ``warn`` line; none passing is
    a CheckpointError (a run never starts from scratch silently)."""
    if spec != "latest":
        path = resolve_checkpoint(spec, folder)
        return path, read_checkpoint(path)
    found = list_checkpoints(folder) if folder else []
    if not found:
        raise CheckpointError(f"--resume latest: no checkpoint in {folder}")
    for path in reversed(found):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: skipping {os.path.basename(path)} for --resume latest: {first_line(e)}")
    raise CheckpointError(f"--resume latest: none of the {len(found)} checkpoints in {folder} passes its integrity "
                          "check; start over with --overwrite")


def read_checkpoint(path):
    """Load a checkpoint file into a dict; CheckpointError if missing, corrupt (CRC), or not a ddpm_ms checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with held_stderr():   # MindSpore logs a misleading "may not have permission" line for a CRC failure
            data = ms.load_checkpoint(path, crc_check=True)
    except Exception as e:  # pylint: disable=broad-except  # MindSpore raises several types here
        raise CheckpointError(f"corrupt or unreadable checkpoint {path} (it fails its integrity check or cannot "
                              f"be parsed): {first_line(e)}") from None
    missing = [k for k in ("config",) + _KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path} is not a ddpm_ms checkpoint (missing {', '.join(missing)})")
    return data


def checkpoint_config(data, path="checkpoint"):
    """The Config stored in a checkpoint dict."""
    try:
        return from_dict(yaml.safe_load(data["config"]))
    except (ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {first_line(e)}") from None


def checkpoint_position(data):
    """(step, epoch, step_in_epoch) stored in a checkpoint dict."""
    return tuple(int(data[k].asnumpy()) for k in _POSITION)


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


def has_ema(data):
    """Whether a checkpoint dict holds EMA weights."""
    return any(k.startswith(EMA_PREFIX) for k in data)


def load_model_weights(model, data, path="checkpoint", prefix=""):
    """Copy weights named ``prefix + param.name`` from a checkpoint dict into ``model`` (in place)."""
    check_compatible(model, {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}, path)
    assign_parameters((p, data[prefix + p.name]) for p in model.trainable_params())


def restore_state(state, data, path="checkpoint"):
    """Restore a :class:`TrainingState` in place from a checkpoint dict: weights, optimizer, loss scaler, EMA and
    position. Returns ``state``."""
    load_model_weights(state.model, data, path)
    if state.ema is not None:
        try:
            state.ema.load(data)
        except KeyError as e:
            raise CheckpointError(f"{path}: {e.args[0]}; resume with ema.enabled=false") from None
    # Adam moments, beta powers and global_step; the LR list is rebuilt from the config (its length
    # depends on the steps per epoch, which change with the number of msrun workers)
    assign_parameters((p, data[p.name]) for _, p in state.optimizer.parameters_and_names()
                      if p.name in data and p.name != "learning_rate")
    scaler = state.loss_scaler
    assign_parameters([(scaler.scale_value, data["loss_scaler.scale_value"]),
                       (scaler.counter, data["loss_scaler.counter"])])
    state.step, state.epoch, state.step_in_epoch = checkpoint_position(data)
    rows = data.get("ddpm_ms.metrics_rows")   # absent from checkpoints written before it was recorded
    state.metrics_rows = None if rows is None else int(rows.asnumpy())
    return state
