import math

import numpy as np
import pytest
import mindspore as ms

from ddpm_ms.schedule import NoiseSchedule, extract, make_betas

# prod_{i<200} (1 - beta_i), beta = linspace(1e-4, 0.02, 200), evaluated exactly with fractions.Fraction.
ALPHA_BAR_T_LINEAR_200 = 0.132182754250618
# The same for T = 1000, the DDPM paper's setting.
ALPHA_BAR_T_LINEAR_1000 = 4.0358297653756835e-05


def test_linear_golden_alpha_bar():
    s = NoiseSchedule.from_name("linear", 200)
    assert abs(s.np["alphas_cumprod"][-1] - ALPHA_BAR_T_LINEAR_200) < 1e-12
    assert abs(float(s.alphas_cumprod.asnumpy()[-1]) - ALPHA_BAR_T_LINEAR_200) < 1e-6
    assert abs(NoiseSchedule.from_name("linear", 1000).np["alphas_cumprod"][-1] - ALPHA_BAR_T_LINEAR_1000) < 1e-12
    assert s.np["betas"][0] == pytest.approx(1e-4) and s.np["betas"][-1] == pytest.approx(0.02)


def test_posterior_variance_at_zero_and_formula():
    s = NoiseSchedule.from_name("linear", 200)
    assert s.np["posterior_variance"][0] == 0.0
    assert float(s.posterior_std.asnumpy()[0]) == 0.0
    t = 57
    ab, ab_prev, b = s.np["alphas_cumprod"][t], s.np["alphas_cumprod"][t - 1], s.np["betas"][t]
    assert s.np["posterior_variance"][t] == pytest.approx(b * (1 - ab_prev) / (1 - ab), rel=1e-12)


def test_cosine_matches_formula():
    T, s_ = 200, 0.008
    sched = NoiseSchedule.from_name("cosine", T)

    def f(t):
        return math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2

    for t in (0, 10, 100, 150):  # away from the clipped ends
        assert sched.np["alphas_cumprod"][t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.np["betas"].max() <= 0.9999


def test_quadratic_and_sigmoid_span_beta_range():
    q = make_betas("quadratic", 100)
    assert q[0] == pytest.approx(1e-4) and q[-1] == pytest.approx(0.02)
    assert np.all(np.diff(q) > 0) and np.all(np.diff(np.diff(q)) > 0)   # convex increasing
    sg = make_betas("sigmoid", 100)
    assert np.all(np.diff(sg) > 0)
    assert sg[49] == pytest.approx(1e-4 + (0.02 - 1e-4) / (1 + math.exp(6 / 99)), rel=1e-9)


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="unknown beta schedule 'exp'"):
        make_betas("exp", 10)


def test_tensors_are_float32_copies_of_float64():
    s = NoiseSchedule.from_name("linear", 200)
    for name in NoiseSchedule.FIELDS:
        tensor = getattr(s, name)
        assert tensor.dtype == ms.float32 and tensor.shape == (200,)
        np.testing.assert_allclose(tensor.asnumpy(), s.np[name].astype(np.float32))


def test_extract_in_graph_mode(mode):
    s = NoiseSchedule.from_name("linear", 200)
    t = ms.Tensor(np.array([0, 199, 42], np.int32))

    @ms.jit
    def f(a, t, x):
        return extract(a, t, x.shape) * x

    x = ms.Tensor(np.ones((3, 1, 2, 2), np.float32))
    out = f(s.sqrt_alphas_cumprod, t, x).asnumpy()
    assert out.shape == (3, 1, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0, 0], np.sqrt(s.np["alphas_cumprod"][[0, 199, 42]]), rtol=1e-6)
