import numpy as np

from ddpm_ms import Denoiser, Recorder, generate, sample


def test_generate_shape_and_recorded_frames(mode, tiny_model, tiny_sched):
    rec = Recorder(("x", "x0"))
    final = generate(Denoiser(tiny_model, tiny_sched), (1, 28, 28), 2, seed=0, callback=rec, progress=False)
    assert final.shape == (2, 1, 28, 28) and np.isfinite(final).all()
    frames = rec.stack("x")
    assert frames.shape == (10, 2, 1, 28, 28) and rec.t == list(range(9, -1, -1))
    np.testing.assert_array_equal(frames[-1], final)
    assert np.abs(rec.stack("x0")).max() <= 1.0                   # clipped x_0 predictions


def test_same_seed_same_images_compiled_or_not(tiny_model, tiny_sched):
    a = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=3, progress=False)
    b = generate(Denoiser(tiny_model, tiny_sched, jit=False), (1, 28, 28), 2, seed=3, batch_size=2, progress=False)
    c = sample(tiny_model, tiny_sched, 28, batch_size=2, channels=1, seed=4, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - c).max() > 1e-2
