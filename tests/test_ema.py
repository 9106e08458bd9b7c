"""EMA of the weights: the closed form with and without warm-up, and the swap that compiled graphs see."""
import os

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from ddpm_ms import kernels
from ddpm_ms.ema import EMA


class _Toy(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([2.0, -4.0], np.float32)), name="w")

    def construct(self, x):
        return x * self.w


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_closed_form(warmup):
    toy = _Toy()
    ema = EMA(toy, decay=0.9, warmup=warmup)
    s0, c = np.array([2.0, -4.0]), np.array([1.0, 3.0])
    toy.w.set_data(Tensor(c.astype(np.float32)))
    for _ in range(5):
        ema.update()
    if warmup:
        expected = s0.copy()
        for n in range(5):
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * c
    else:
        expected = 0.9 ** 5 * s0 + (1 - 0.9 ** 5) * c
    np.testing.assert_allclose(ema.shadow[0].asnumpy(), expected, rtol=1e-5)
    assert int(ema.num_updates.asnumpy()) == 5
    with ema.swapped():
        np.testing.assert_allclose(toy.w.asnumpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(toy.w.asnumpy(), c.astype(np.float32))


def test_ema_swap_is_seen_by_graphs_compiled_before_it(mode):
    """The train step and cached sampling steps are compiled once; the swap must reach their weights."""
    toy = _Toy()
    ema = EMA(toy, decay=0.5, warmup=False)
    x = Tensor(np.ones(2, np.float32))

    def forward(x):
        return toy(x)

    def train_update():            # an optimizer-like in-place update, compiled once
        ops.assign(toy.w, toy.w + 1.0)
        return toy.w

    forward, train_update = ms.jit(forward), ms.jit(train_update)
    np.testing.assert_allclose(forward(x).asnumpy(), [2.0, -4.0])
    train_update()
    ema.update()                   # shadow = 0.5 [2, -4] + 0.5 [3, -3]
    with ema.swapped():
        np.testing.assert_allclose(forward(x).asnumpy(), [2.5, -3.5])
    np.testing.assert_allclose(forward(x).asnumpy(), [3.0, -3.0])
    train_update()
    np.testing.assert_allclose(toy.w.asnumpy(), [4.0, -2.0])
    np.testing.assert_allclose(forward(x).asnumpy(), [4.0, -2.0])


def test_ema_kernel_equals_the_ops_update_bit_for_bit(mode, tiny_model):
    """The in-place EMA kernel (CPU kernel library) against MindSpore's concat/Mul/Add, over five warm-up updates
    of a tiny U-Net whose weights change between updates: the same float32 bits. Compiled under GRAPH_MODE, eager
    under PYNATIVE_MODE."""
    if kernels.library() is None and not os.environ.get("CI"):
        pytest.skip("the kernel library is unavailable")
    fast = EMA(tiny_model, decay=0.99)
    with kernels.using("off"):
        plain = EMA(tiny_model, decay=0.99)
    assert fast._kernel is not None and plain._kernel is None   # pylint: disable=protected-access
    rng = np.random.default_rng(0)
    for n in range(5):
        for p in tiny_model.trainable_params():
            ops.assign(p, p + Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
        for ema in (fast, plain):
            d = ema.update() if mode == "graph" else ema._update_fn()   # pylint: disable=protected-access
            assert float(d.asnumpy()) == pytest.approx(min(0.99, (1 + n) / (10 + n)), rel=1e-6)
    np.testing.assert_array_equal(fast.flat.asnumpy(), plain.flat.asnumpy())
    assert not np.array_equal(fast.flat.asnumpy(), np.concatenate(
        [p.asnumpy().reshape(-1) for p in tiny_model.trainable_params()]))
    assert int(fast.num_updates.asnumpy()) == int(plain.num_updates.asnumpy()) == 5
