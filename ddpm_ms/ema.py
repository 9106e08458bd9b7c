"""Exponential moving average of model weights, the weights DDPM samples from."""
from contextlib import contextmanager

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, ops

from . import kernels
from .kernels import ops as kernel_ops
from .params import assign_parameters

PREFIX = "ema."


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, compiled, over a model's trainable parameters.

    With ``warmup`` the decay of update n (0-based) is min(decay, (1 + n) / (10 + n)), so early
    averages are not dominated by the random initialisation. The caller updates every k steps.
    The shadow weights live in one flat buffer, so an update is a handful of ops rather than several per
    parameter (on CPU with the kernel library, one in-place kernel: no concatenation of the weights, whose graph
    takes seconds to compile); ``shadow`` gives them per parameter. In checkpoints they are named
    ``ema.<param name>``, and the update count ``ema.num_updates``.
    """

    def __init__(self, model, decay=0.995, warmup=True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.params = ParameterTuple(model.trainable_params())
        self.names = [PREFIX + p.name for p in self.params]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes])
        self.flat = Parameter(Tensor(self._flatten(p.asnumpy() for p in self.params)), name=PREFIX + "flat",
                              requires_grad=False)
        self.num_updates = Parameter(Tensor(0, ms.int32), name=PREFIX + "num_updates", requires_grad=False)
        self.decay, self.warmup = decay, warmup
        lib = kernels.library()
        self._kernel = kernel_ops.ema_update(lib) if lib is not None else None
        self._update = ms.jit(self._update_fn)

    @staticmethod
    def _flatten(arrays):
        return np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])

    def current_decay(self):
        """The decay the next update will use (a float32 scalar Tensor)."""
        n = self.num_updates.astype(ms.float32)
        if self.warmup:
            return ops.minimum(Tensor(self.decay, ms.float32), (1.0 + n) / (10.0 + n))
        return Tensor(self.decay, ms.float32)

    def _update_fn(self):
        d = self.current_decay()
        if self._kernel is not None:   # a constant when the graph is compiled
            d = ops.depend(d, self._kernel(*self.params, self.flat, d.reshape(1)))
        else:
            theta = ops.concat([p.reshape(-1) for p in self.params])
            ops.assign(self.flat, d * self.flat + (1.0 - d) * theta)
        ops.assign(self.num_updates, self.num_updates + 1)
        return d

    def update(self):
        """One EMA update from the current model weights; returns the decay used."""
        return self._update()

    @property
    def shadow(self):
        """The EMA weights as a list of Tensors, one per trainable parameter, in the model's order."""
        flat = self.flat.asnumpy()
        return [Tensor(flat[a:b].reshape(shape).copy())
                for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)]

    def state(self):
        """{name: Tensor} for checkpoints."""
        out = dict(zip(self.names, self.shadow))
        out[self.num_updates.name] = self.num_updates
        return out

    def load(self, data):
        """Restore shadow weights and the update count from a checkpoint dict."""
        missing = [n for n in self.names + [self.num_updates.name] if n not in data]
        if missing:
            raise KeyError(f"checkpoint has no EMA weights ({missing[0]} missing)")
        flat = self._flatten(data[n].asnumpy() for n in self.names)
        assign_parameters([(self.flat, flat), (self.num_updates, data[self.num_updates.name])])

    @contextmanager
    def swapped(self):
        """Temporarily put the EMA weights into the model (e.g. to sample), then restore the raw weights.

        In place, so compiled graphs (the train step, cached sampling steps) see both changes.
        """
        raw = [p.asnumpy().copy() for p in self.params]   # asnumpy() may share the storage
        assign_parameters(zip(self.params, self.shadow))
        try:
            yield
        finally:
            assign_parameters(zip(self.params, raw))
