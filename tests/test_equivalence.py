"""ddpm_ms's fast formulation is the tutorial's model: same parameters, same outputs, same gradients."""
import numpy as np
import mindspore as ms

import ddpm_ms

import tutorial_reference as ref   # tests/tutorial_reference.py: the tutorial's network as it writes it


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
    worst = max(np.abs(ga - gb).max() / (np.abs(gb).max() + 1e-12) for ga, gb in zip(*grads))
    assert worst < 2e-5, worst       # relative to each gradient's largest entry (up to ~60 here)
    assert max(np.abs(g).max() for g in grads[0]) > 1e-3


def test_depthwise_conv_backward_matches_autodiff(mode):
    """The hand-written depthwise-conv backward equals MindSpore's autodiff of nn.Conv2d(group=C)."""
    ms.set_seed(2)
    fast = ddpm_ms.model.DepthwiseConv2d(5, 7)
    plain = ms.nn.Conv2d(5, 5, 7, padding=3, group=5, pad_mode="pad")
    plain.weight.set_data(fast.weight.value())
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((3, 5, 9, 6)).astype(np.float32))
    w = ms.Tensor(rng.standard_normal((3, 5, 9, 6)).astype(np.float32))

    def weighted_sum(net):
        def loss(x_):
            return (net(x_) * w).sum()
        return loss

    results = []
    for net in (plain, fast):
        value, (dx, (dw,)) = ms.value_and_grad(weighted_sum(net), 0, net.trainable_params())(x)
        results.append((value.asnumpy(), dx.asnumpy(), dw.asnumpy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4)
    assert np.abs(results[0][2]).max() > 1e-2


def test_groupnorm_inference_kernel_is_groupnorm(mode):
    """model.GroupNorm in inference (LayerNorm kernel) == in training (GroupNorm kernel), 1 and 4 groups."""
    rng = np.random.default_rng(4)
    x = ms.Tensor((rng.standard_normal((3, 8, 5, 6)) * 3 + 1).astype(np.float32))
    for groups in (1, 4):
        norm = ddpm_ms.model.GroupNorm(groups, 8)
        norm.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, 8).astype(np.float32)))
        norm.beta.set_data(ms.Tensor(rng.uniform(-1, 1, 8).astype(np.float32)))
        outs = []
        for training in (True, False):
            norm.set_train(training)
            outs.append(norm(x).asnumpy())
        np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=0)
        per_group = outs[0].reshape(3, groups, -1)
        assert np.abs(per_group.std(-1) - 1).max() > 0.05   # gamma/beta really applied


def test_unet_train_and_eval_modes_agree():
    ms.set_seed(5)
    net = ddpm_ms.Unet(dim=16, dim_mults=(1, 2), channels=1, block_type="resnet")
    x, t = _inputs()
    outs = []
    for training in (True, False):
        net.set_train(training)
        outs.append(net(x, t).asnumpy())
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5, rtol=0)
