import numpy as np
import pytest
import mindspore as ms

from ddpm_ms.diffusion import loss_weights, objective_named, p_losses, q_sample, predict_start_from_noise
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
    s = NoiseSchedule.from_name("linear", 200)
    x0 = np.zeros((2, 1, 4, 4), np.float32)
    noise = np.ones_like(x0)
    t = ms.Tensor(np.array([10, 150], np.int32))
    weights = ms.Tensor(loss_weights(s, "eps", "p2", p2_gamma=1.0, p2_k=1.0).astype(np.float32))
    loss = float(p_losses(s, lambda x, t: ms.Tensor(np.zeros_like(x0)), ms.Tensor(x0), t,
                          ms.Tensor(noise), "l2", weights=weights).asnumpy())
    ab = s.np["alphas_cumprod"][[10, 150]]
    w = 1.0 / (1.0 + ab / (1 - ab))
    assert loss == pytest.approx(w.mean(), rel=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_objective_conversions_are_exact_inverses(schedule, objective):
    """target(x0, eps) then split(x_t, target) gives back (x0, eps), at every t; v is Salimans & Ho's formula."""
    s = NoiseSchedule.from_name(schedule, 200)
    rng = np.random.default_rng(4)
    t_np = np.array([0, 1, 50, 100, 198, 199], np.int32)
    x0 = rng.uniform(-1, 1, (6, 1, 4, 4)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = ms.Tensor(t_np)
    x_t = q_sample(s, ms.Tensor(x0), t, ms.Tensor(eps))
    obj = objective_named(objective)
    target = obj.target(s, ms.Tensor(x0), ms.Tensor(eps), t).asnumpy()
    a = s.np["sqrt_alphas_cumprod"][t_np][:, None, None, None]
    b = s.np["sqrt_one_minus_alphas_cumprod"][t_np][:, None, None, None]
    np.testing.assert_allclose(target, {"eps": eps, "x0": x0, "v": a * eps - b * x0}[objective], atol=1e-6)
    x0_back, eps_back = (v.asnumpy() for v in obj.split(s, x_t, t, ms.Tensor(target)))
    # float32 rounding, amplified by 1/sqrt(ab) where x0 comes from eps and by 1/sqrt(1 - ab) the other way
    err_x0, err_eps = (np.abs(u - v).max((1, 2, 3)) for u, v in ((x0_back, x0), (eps_back, eps)))
    assert (err_x0 <= 5e-6 * (1 + 1 / a.ravel())).all(), err_x0
    assert (err_eps <= 5e-6 * (1 + 1 / b.ravel())).all(), err_eps
    # the relation the weightings rely on: |eps error|^2 / |target error|^2 = eps_error_ratio(SNR)
    d = rng.standard_normal(x0.shape).astype(np.float32)
    eps_err = obj.split(s, x_t, t, ms.Tensor(target + d))[1].asnumpy() - eps_back
    ratio = (eps_err ** 2).sum((1, 2, 3)) / (d ** 2).sum((1, 2, 3))
    np.testing.assert_allclose(ratio, obj.eps_error_ratio(s.np["snr"][t_np]), rtol=1e-3)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_weights_are_the_papers_formula(objective):
    """Hang et al. 2023: min(SNR, g)/SNR for eps, min(SNR, g) for x0, min(SNR, g)/(SNR + 1) for v."""
    s = NoiseSchedule.from_name("linear", 200)
    t = np.array([0, 20, 60, 199])
    ab = s.np["alphas_cumprod"][t]
    snr = ab / (1 - ab)
    assert snr[0] > 5 > snr[-1]            # both sides of the clamp at gamma = 5
    want = {"eps": np.minimum(snr, 5) / snr, "x0": np.minimum(snr, 5), "v": np.minimum(snr, 5) / (snr + 1)}
    np.testing.assert_allclose(loss_weights(s, objective, "min_snr", min_snr_gamma=5.0)[t], want[objective],
                               rtol=1e-12)
    np.testing.assert_allclose(loss_weights(s, objective, "min_snr", min_snr_gamma=2.0)[t],
                               want[objective] * np.minimum(snr, 2) / np.minimum(snr, 5), rtol=1e-12)
    np.testing.assert_array_equal(loss_weights(s, objective, "none"), np.ones(200))
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weights(s, objective, "snr+1")


def test_edm_weights_are_the_papers_weight_times_its_noise_distribution():
    """Karras et al. 2022: lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 on the x0 loss, times the mass of
    ln sigma ~ N(-1.2, 1.2^2) that falls to each timestep (uniform t), sigma_t^2 = (1 - ab) / ab; mean 1 over t."""
    import math
    s = NoiseSchedule.from_name("cosine", 200)
    ab = s.np["alphas_cumprod"]
    log_sigma = [0.5 * math.log((1 - a) / a) for a in ab]

    def cdf(u):
        return 0.5 * (1 + math.erf((u + 1.2) / (1.2 * math.sqrt(2))))

    mass = []
    for t in range(200):   # the normal's mass between the midpoints around ln sigma_t
        lo = cdf((log_sigma[t - 1] + log_sigma[t]) / 2) if t > 0 else 0.0
        hi = cdf((log_sigma[t] + log_sigma[t + 1]) / 2) if t < 199 else 1.0
        mass.append(hi - lo)
    assert sum(mass) == pytest.approx(1.0, abs=1e-12)
    sigma2 = (1 - ab) / ab
    want_x0 = (sigma2 + 0.25) / (sigma2 * 0.25) * np.array(mass)
    got_x0 = loss_weights(s, "x0", "edm", edm_p_mean=-1.2, edm_p_std=1.2, edm_sigma_data=0.5)
    np.testing.assert_allclose(got_x0, want_x0 / want_x0.mean(), rtol=1e-9)
    assert got_x0.mean() == pytest.approx(1.0)
    # the same weighting of the eps error for the other objectives: w_eps = w_x0 / SNR, w_v = w_eps (SNR / (SNR + 1))
    snr = s.np["snr"]
    for objective, ratio in (("eps", 1 / snr), ("v", 1 / (snr + 1))):
        w = want_x0 * ratio
        np.testing.assert_allclose(loss_weights(s, objective, "edm"), w / w.mean(), rtol=1e-9)
    # the peak of the noise distribution moves with P_mean
    assert np.argmax(loss_weights(s, "x0", "edm", edm_p_mean=1.0) / (1 + 4 * snr)) > np.argmax(got_x0 / (1 + 4 * snr))


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_weighted_l2_loss_is_the_same_eps_loss_for_every_objective(objective):
    """With min-SNR weights, an objective's weighted l2 loss of a prediction equals the eps objective's weighted
    l2 loss of the same prediction expressed as eps: the weightings are one weighting, written per objective."""
    s = NoiseSchedule.from_name("cosine", 100)
    rng = np.random.default_rng(5)
    x0 = ms.Tensor(rng.uniform(-1, 1, (4, 1, 4, 4)).astype(np.float32))
    noise = ms.Tensor(rng.standard_normal((4, 1, 4, 4)).astype(np.float32))
    t = ms.Tensor(np.array([2, 30, 60, 95], np.int32))
    out = ms.Tensor(rng.standard_normal((4, 1, 4, 4)).astype(np.float32))
    x_t = q_sample(s, x0, t, noise)
    eps_of_out = objective_named(objective).split(s, x_t, t, out)[1]

    def loss(obj, prediction):
        w = ms.Tensor(loss_weights(s, obj, "min_snr").astype(np.float32))
        return float(p_losses(s, lambda x, t: prediction, x0, t, noise, "l2", objective=obj, weights=w).asnumpy())

    assert loss(objective, out) == pytest.approx(loss("eps", eps_of_out), rel=1e-4)


@pytest.mark.parametrize("loss_type", ["huber", "l1", "l2"])
def test_eps_objective_without_weighting_is_the_tutorial_loss(loss_type):
    """objective eps + loss_weighting none, as the train step builds it, equals the tutorial's p_losses."""
    s = NoiseSchedule.from_name("linear", 200)
    rng = np.random.default_rng(6)
    x0 = ms.Tensor(rng.uniform(-1, 1, (4, 1, 4, 4)).astype(np.float32))
    noise = ms.Tensor(2 * rng.standard_normal((4, 1, 4, 4)).astype(np.float32))
    t = ms.Tensor(np.array([0, 5, 100, 199], np.int32))
    out = rng.standard_normal((4, 1, 4, 4)).astype(np.float32)
    weights = ms.Tensor(loss_weights(s, "eps", "none").astype(np.float32))
    ours = float(p_losses(s, lambda x, t: ms.Tensor(out), x0, t, noise, loss_type, objective="eps",
                          weights=weights).asnumpy())
    d = out - noise.asnumpy()
    tutorial = {"huber": np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5), "l1": np.abs(d), "l2": d * d}
    assert ours == pytest.approx(float(tutorial[loss_type].mean()), rel=1e-6)


def test_unknown_loss_type():
    s = NoiseSchedule.from_name("linear", 10)
    x = ms.Tensor(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown loss type .l3.; choose one of huber, l1, l2"):
        p_losses(s, lambda x, t: x, x, ms.Tensor(np.array([1], np.int32)), x, "l3")


def test_predict_start_inverts_q_sample():
    s = NoiseSchedule.from_name("cosine", 100)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (3, 1, 4, 4)).astype(np.float32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t = ms.Tensor(np.array([0, 50, 90], np.int32))
    xt = q_sample(s, ms.Tensor(x0), t, ms.Tensor(noise))
    np.testing.assert_allclose(predict_start_from_noise(s, xt, t, ms.Tensor(noise)).asnumpy(), x0, atol=1e-3)
