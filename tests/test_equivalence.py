"""ddpm_ms's fast formulation is the tutorial's model: same parameters, same outputs, same gradients."""
import os
import sys

import numpy as np
import mindspore as ms

import ddpm_ms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import tutorial_reference as ref  # noqa: E402  pylint: disable=wrong-import-position


def _pair():
    ms.set_seed(1)
    tutorial = ref.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    fast = ddpm_ms.Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    ref.copy_weights(tutorial, fast)
    return tutorial, fast


def _inputs():
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    t = ms.Tensor(np.array([3, 170], np.int32))
    return x, t


def test_same_parameters_same_outputs():
    tutorial, fast = _pair()
    assert ddpm_ms.count_params(tutorial) == ddpm_ms.count_params(fast) == 2_992_180
    x, t = _inputs()
    a, b = tutorial(x, t).asnumpy(), fast(x, t).asnumpy()
    assert np.abs(a).mean() > 1e-3          # a real output, not zeros
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_same_gradients():
    tutorial, fast = _pair()
    x, t = _inputs()
    w = ms.Tensor(np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    grads = []
    for net in (tutorial, fast):
        params = net.trainable_params()
        fn = ms.value_and_grad(lambda x_, t_, n=net: (n(x_, t_) * w).sum(), None, params)
        grads.append([g.asnumpy() for g in fn(x, t)[1]])
    worst = max(np.abs(ga - gb).max() for ga, gb in zip(*grads))
    assert worst < 1e-4, worst
    assert max(np.abs(g).max() for g in grads[0]) > 1e-3
