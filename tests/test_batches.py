"""What each train step consumes: label dropout for classifier-free guidance, and the per-step noise."""
import numpy as np

from ddpm_ms.batches import drop_labels, step_noise


def test_label_dropout_rate():
    labels = np.arange(20000) % 10
    dropped = [(drop_labels(0, step, labels, 0.1, 10).asnumpy() == 10).mean() for step in range(3)]
    for frac in dropped:
        assert abs(frac - 0.1) < 0.01        # 5 sigma of a binomial with n=20000
    kept = drop_labels(0, 0, labels, 0.1, 10).asnumpy()
    np.testing.assert_array_equal(kept[kept != 10], labels[kept != 10])
    assert (drop_labels(0, 0, labels, 0.0, 10).asnumpy() == labels).all()


def test_step_noise_is_a_function_of_seed_step_and_rank():
    t, noise = step_noise(0, 7, (4, 1, 8, 8), 200)
    t2, noise2 = step_noise(0, 7, (4, 1, 8, 8), 200)
    np.testing.assert_array_equal(t.asnumpy(), t2.asnumpy())
    np.testing.assert_array_equal(noise.asnumpy(), noise2.asnumpy())
    rng = np.random.default_rng([0, 7])       # the documented derivation, by hand
    np.testing.assert_array_equal(t.asnumpy(), rng.integers(0, 200, size=(4,), dtype=np.int32))
    np.testing.assert_array_equal(noise.asnumpy(), rng.standard_normal((4, 1, 8, 8), dtype=np.float32))
    other_step, other_rank = step_noise(0, 8, (4, 1, 8, 8), 200)[1], step_noise(0, 7, (4, 1, 8, 8), 200, rank=1)[1]
    assert np.abs(other_step.asnumpy() - noise.asnumpy()).max() > 0.1
    assert np.abs(other_rank.asnumpy() - noise.asnumpy()).max() > 0.1
