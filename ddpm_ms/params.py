"""In-place Parameter updates that compiled graphs see.

``Parameter.set_data`` (and so ``ms.load_param_into_net``) gives the Parameter new storage. A graph
compiled earlier (the train step, the EMA update, a cached sampling step) keeps the old storage: it
goes on reading and writing values that the Python Parameter no longer shows. ``ops.assign`` copies
into the existing storage, so every graph and the Python side stay in step.
"""
import numpy as np
from mindspore import Tensor, ops


def assign_parameters(pairs):
    """Copy each value into its Parameter in place: ``pairs`` iterates (Parameter, Tensor or ndarray)."""
    for param, value in pairs:
        array = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
        if tuple(array.shape) != tuple(param.shape):
            raise ValueError(f"{param.name}: shape {tuple(array.shape)} does not match {tuple(param.shape)}")
        ops.assign(param, Tensor(array).astype(param.dtype))
