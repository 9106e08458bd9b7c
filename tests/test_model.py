import numpy as np
import pytest
import mindspore as ms

from ddpm_ms.layers import softmax_axis2
from ddpm_ms.model import GELU, Unet, count_params
from ddpm_ms.model import Attention, LinearAttention, SinusoidalPositionEmbeddings


def test_tutorial_unet_parameter_count():
    net = Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    assert count_params(net) == 2_992_180


def test_parameter_names_are_unique():
    net = Unet(dim=28, channels=1, dim_mults=(1, 2, 4))
    names = [p.name for p in net.trainable_params()]
    assert len(names) == len(set(names)) == 166
    assert "downs.0.block1.ds_conv.weight" in names


@pytest.mark.parametrize("size,channels,block_type", [
    (28, 1, "convnext"), (32, 3, "convnext"), (28, 1, "resnet"), (32, 3, "resnet"),
])
def test_output_shape_equals_input_shape(size, channels, block_type):
    ms.set_seed(0)
    net = Unet(dim=12, channels=channels, dim_mults=(1, 2, 4), block_type=block_type, resnet_groups=4)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, channels, size, size)).astype(np.float32))
    t = ms.Tensor(np.array([0, 7], np.int32))
    out = net(x, t)
    assert out.shape == x.shape
    assert np.isfinite(out.asnumpy()).all()


def test_time_embedding_changes_output():
    ms.set_seed(0)
    net = Unet(dim=8, channels=1, dim_mults=(1, 2))
    x = ms.Tensor(np.ones((2, 1, 28, 28), np.float32))
    out = net(x, ms.Tensor(np.array([0, 9], np.int32))).asnumpy()
    assert np.abs(out[0] - out[1]).max() > 1e-4


def test_unknown_block_type_is_rejected():
    with pytest.raises(ValueError, match="block_type"):
        Unet(dim=8, channels=1, dim_mults=(1, 2), block_type="vit")


def test_sinusoidal_embedding_matches_formula():
    emb = SinusoidalPositionEmbeddings(8)(ms.Tensor(np.array([0, 3], np.int32))).asnumpy()
    freqs = np.exp(np.arange(4) * -(np.log(10000) / 3))
    expected = np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)])
    np.testing.assert_allclose(emb[1], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)


def test_fast_gelu_is_tanh_gelu():
    x = ms.Tensor(np.linspace(-6, 6, 1001).astype(np.float32))
    ref = ms.nn.GELU()(x).asnumpy()   # MindSpore's default: the tanh approximation
    np.testing.assert_allclose(GELU()(x).asnumpy(), ref, atol=1e-6)


def test_softmax_axis2_matches_softmax():
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 4, 32, 49)).astype(np.float32))
    np.testing.assert_allclose(softmax_axis2(x).asnumpy(), ms.ops.softmax(x, -2).asnumpy(), atol=1e-6)


@pytest.mark.parametrize("cls", [Attention, LinearAttention])
def test_attention_keeps_shape(cls):
    ms.set_seed(0)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 16, 7, 7)).astype(np.float32))
    assert cls(16)(x).shape == (2, 16, 7, 7)
