import numpy as np
import pytest
import mindspore as ms

from ddpm_ms import kernels
from ddpm_ms.layers import activation_layout, softmax_axis2
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


def _softmax(a, axis):
    e = np.exp(a - a.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _attention_oracle(cell, x, linear):
    """The tutorial's Attention / LinearAttention written out in numpy from the cell's weights (einsum form)."""
    b, c, hh, ww = x.shape
    heads = cell.heads
    w_qkv = cell.to_qkv.weight.asnumpy()[:, :, 0, 0]                    # [3 * heads * d, c]
    qkv = np.einsum("oc,bcn->bon", w_qkv, x.reshape(b, c, -1))
    q, k, v = (a.reshape(b, heads, -1, hh * ww) for a in np.split(qkv, 3, axis=1))
    d = q.shape[2]
    if linear:
        q, k = _softmax(q, 2) * d ** -0.5, _softmax(k, 3)
        v = v / (hh * ww)
        context = np.einsum("bhdn,bhen->bhde", k, v)
        out = np.einsum("bhde,bhdn->bhen", context, q)
        conv = cell.to_out[0]
    else:
        attn = _softmax(np.einsum("bhdi,bhdj->bhij", q * d ** -0.5, k), 3)
        out = np.einsum("bhij,bhdj->bhdi", attn, v)
        conv = cell.to_out
    out = out.reshape(b, -1, hh * ww)
    y = np.einsum("oc,bcn->bon", conv.weight.asnumpy()[:, :, 0, 0], out) + conv.bias.asnumpy()[None, :, None]
    y = y.reshape(b, -1, hh, ww)
    if linear:   # the channel LayerNorm with gain g
        g = cell.to_out[1].g.asnumpy()
        y = (y - y.mean(1, keepdims=True)) / np.sqrt(y.var(1, keepdims=True) + 1e-5) * g
    return y


@pytest.mark.parametrize("path", ["NCHW", "NHWC-kernels", "NHWC-ops"])
@pytest.mark.parametrize("cls", [Attention, LinearAttention])
def test_attention_matches_the_tutorial_formula(cls, path):
    """The layer as MindSpore's ops give it (NCHW), and channels-last (HeadAttention on its kernel or on MindSpore's
    ops), against the tutorial's formula in numpy."""
    ms.set_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 16, 7, 7)).astype(np.float32)
    layout = path[:4]
    with kernels.using("onednn" if path == "NHWC-kernels" else "off"), activation_layout(layout):
        cell = cls(16, heads=2, dim_head=8)
    assert (cell.attend is not None) == (layout == "NHWC")
    if path == "NHWC-kernels":
        assert cell.attend.fast is not None
    inp = x if layout == "NCHW" else x.transpose(0, 2, 3, 1)
    out = cell(ms.Tensor(inp)).asnumpy()
    out = out if layout == "NCHW" else out.transpose(0, 3, 1, 2)
    assert out.shape == (2, 16, 7, 7)
    np.testing.assert_allclose(out, _attention_oracle(cell, x.astype(np.float64), cls is LinearAttention),
                               rtol=1e-4, atol=1e-4)
