import numpy as np

from ddpm_ms import p_sample_loop, sample


def test_p_sample_loop_shape_and_frames(mode, tiny_model, tiny_sched):
    final = p_sample_loop(tiny_model, tiny_sched, (2, 1, 28, 28), seed=0, progress=False)
    assert final.shape == (2, 1, 28, 28) and np.isfinite(final).all()
    frames = p_sample_loop(tiny_model, tiny_sched, (2, 1, 28, 28), seed=0, return_all=True, progress=False)
    assert frames.shape == (10, 2, 1, 28, 28)
    np.testing.assert_allclose(frames[-1], final, atol=1e-5)


def test_same_seed_same_images_compiled_or_not(tiny_model, tiny_sched):
    a = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=3, progress=False)
    b = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=3, progress=False, jit=False)
    c = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=4, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - c).max() > 1e-2
