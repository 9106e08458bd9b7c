"""Exponential moving average of model weights, the weights DDPM samples from."""
from contextlib import contextmanager

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, ops

from .params import assign_parameters

PREFIX = "ema."


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, compiled, over a model's trainable parameters.

    With ``warmup`` the decay of update n (0-based) is min(decay, (1 + n) / (10 + n)), so early
    averages are not dominated by the random initialisation. The caller updates every k steps.
    Shadow weights are named ``ema.<param name>``; ``num_updates`` is ``ema.num_updates``.
    """

    def __init__(self, model, decay=0.995, warmup=True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.params = ParameterTuple(model.trainable_params())
        self.shadow = ParameterTuple([Parameter(Tensor(p.asnumpy()), name=PREFIX + p.name, requires_grad=False)
                                      for p in self.params])
        self.num_updates = Parameter(Tensor(0, ms.int32), name=PREFIX + "num_updates", requires_grad=False)
        self.decay, self.warmup = decay, warmup
        self._update = ms.jit(self._update_fn)

    def current_decay(self):
        """The decay the next update will use (a float32 scalar Tensor)."""
        n = self.num_updates.astype(ms.float32)
        if self.warmup:
            return ops.minimum(Tensor(self.decay, ms.float32), (1.0 + n) / (10.0 + n))
        return Tensor(self.decay, ms.float32)

    def _update_fn(self):
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            ops.assign(s, d * s + (1.0 - d) * p)
        ops.assign(self.num_updates, self.num_updates + 1)
        return d

    def update(self):
        """One EMA update from the current model weights; returns the decay used."""
        return self._update()

    def state(self):
        """{name: Tensor} for checkpoints."""
        out = {s.name: s for s in self.shadow}
        out[self.num_updates.name] = self.num_updates
        return out

    def load(self, data):
        """Restore shadow weights and the update count from a checkpoint dict."""
        missing = [s.name for s in self.shadow if s.name not in data]
        if missing or self.num_updates.name not in data:
            raise KeyError(f"checkpoint has no EMA weights ({(missing or [self.num_updates.name])[0]} missing)")
        assign_parameters([(s, data[s.name]) for s in self.shadow] + [(self.num_updates, data[self.num_updates.name])])

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
