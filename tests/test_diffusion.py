import numpy as np
import pytest
import mindspore as ms

from ddpm_ms.diffusion import p_losses, q_sample, predict_start_from_noise
from ddpm_ms.schedule import NoiseSchedule


def _t(value, n):
    return ms.Tensor(np.full((n,), value, np.int32))


def test_q_sample_at_t0_returns_about_x0():
    s = NoiseSchedule.from_name("linear", 200)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (64, 1, 28, 28)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    xt = q_sample(s, ms.Tensor(x0), _t(0, 64), ms.Tensor(noise)).asnumpy()
    # sqrt(1 - 1e-4) x0 + 0.01 * noise
    assert np.abs(xt - x0).mean() < 0.01
    np.testing.assert_allclose(xt, np.sqrt(1 - 1e-4) * x0 + 0.01 * noise, atol=1e-6)


@pytest.mark.parametrize("name,timesteps", [("cosine", 200), ("linear", 1000)])
def test_q_sample_at_last_step_is_standard_normal(name, timesteps):
    s = NoiseSchedule.from_name(name, timesteps)
    x0 = ms.Tensor(np.ones((256, 1, 28, 28), np.float32))     # all signal, far from N(0, 1)
    xt = q_sample(s, x0, _t(timesteps - 1, 256)).asnumpy()
    assert abs(xt.mean()) < 0.02
    assert abs(xt.std() - 1) < 0.02


def test_q_sample_statistics_follow_alpha_bar_for_tutorial_schedule():
    # The tutorial's T=200 linear schedule keeps sqrt(alpha_bar_T) = 0.364 of the signal at t=T-1.
    s = NoiseSchedule.from_name("linear", 200)
    x0 = ms.Tensor(np.ones((256, 1, 28, 28), np.float32))
    xt = q_sample(s, x0, _t(199, 256)).asnumpy()
    ab = s.np["alphas_cumprod"][-1]
    assert xt.mean() == pytest.approx(np.sqrt(ab), abs=0.02)
    assert xt.std() == pytest.approx(np.sqrt(1 - ab), abs=0.02)


def _huber(d):
    a = np.abs(d)
    return np.where(a < 1, 0.5 * d * d, a - 0.5)


@pytest.mark.parametrize("loss_type,fn", [("huber", _huber), ("l1", np.abs), ("l2", np.square)])
def test_p_losses_with_known_prediction(loss_type, fn):
    s = NoiseSchedule.from_name("linear", 200)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32) * 2     # some |d| > 1 for Huber
    known = rng.standard_normal(x0.shape).astype(np.float32)
    seen = {}

    def model(x, t):
        seen["x"] = x.asnumpy()
        return ms.Tensor(known)

    t = ms.Tensor(np.array([0, 5, 100, 199], np.int32))
    loss = float(p_losses(s, model, ms.Tensor(x0), t, ms.Tensor(noise), loss_type).asnumpy())
    assert loss == pytest.approx(float(fn(known - noise).mean()), rel=1e-5)
    expected_xt = q_sample(s, ms.Tensor(x0), t, ms.Tensor(noise)).asnumpy()
    np.testing.assert_allclose(seen["x"], expected_xt, atol=1e-6)


def test_p2_weighting():
    s = NoiseSchedule.from_name("linear", 200, p2_gamma=1.0, p2_k=1.0)
    x0 = np.zeros((2, 1, 4, 4), np.float32)
    noise = np.ones_like(x0)
    t = ms.Tensor(np.array([10, 150], np.int32))
    loss = float(p_losses(s, lambda x, t: ms.Tensor(np.zeros_like(x0)), ms.Tensor(x0), t,
                          ms.Tensor(noise), "l2").asnumpy())
    ab = s.np["alphas_cumprod"][[10, 150]]
    w = 1.0 / (1.0 + ab / (1 - ab))
    assert loss == pytest.approx(w.mean(), rel=1e-5)


def test_unknown_loss_type():
    s = NoiseSchedule.from_name("linear", 10)
    x = ms.Tensor(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown loss_type"):
        p_losses(s, lambda x, t: x, x, ms.Tensor(np.array([1], np.int32)), x, "l3")


def test_predict_start_inverts_q_sample():
    s = NoiseSchedule.from_name("cosine", 100)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (3, 1, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = ms.Tensor(np.array([0, 50, 90], np.int32))
    xt = q_sample(s, ms.Tensor(x0), t, ms.Tensor(noise))
    np.testing.assert_allclose(predict_start_from_noise(s, xt, t, ms.Tensor(noise)).asnumpy(), x0, atol=1e-3)
