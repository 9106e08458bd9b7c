"""The quality metric: Fréchet distance and KID against closed forms, the classifier on real data, grid parsing."""
import numpy as np
import pytest

from ddpm_ms import metrics
from ddpm_ms.metrics import real_images
from ddpm_ms.viz import read_grid, save_grid
from conftest import assert_figure


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 6))
    mu, cov = metrics.gaussian_stats(a)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-8
    # diagonal: ||m||^2 + sum(a + b - 2 sqrt(ab))
    s1, s2, m = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5]), np.array([1.0, -2.0, 0.0])
    expected = m @ m + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert metrics.frechet_distance(np.zeros(3), np.diag(s1), m, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # rotated: FD(N(0, I), N(0, R D R^T)) = sum(1 + d - 2 sqrt(d))
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    d = np.array([0.25, 1.0, 9.0])
    fd = metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), q @ np.diag(d) @ q.T)
    assert fd == pytest.approx(np.sum(1 + d - 2 * np.sqrt(d)), rel=1e-7)


def test_kid_zero_for_same_distribution_positive_for_shifted():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    same = metrics.kernel_inception_distance(x, y)
    shifted = metrics.kernel_inception_distance(x, y + 0.5)
    assert abs(same) < 0.01
    assert shifted > 0.1 and shifted > 20 * abs(same)


def test_inception_score_bounds():
    assert metrics.inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    confident = np.eye(10)[np.arange(100) % 10] * 0.999 + 0.0001
    assert metrics.inception_score(confident) > 9.5


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    import os
    root = os.environ.get("DDPM_MS_DATA_DIR")
    if not root or not os.path.isdir(root):
        pytest.skip("needs DDPM_MS_DATA_DIR")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield metrics.Evaluator(root), root
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


def test_classifier_is_cached_and_accurate(evaluator):
    ev, root = evaluator
    assert ev.accuracy > 0.8
    net, acc = metrics.load_classifier(root)       # second call loads the cached checkpoint
    assert acc == pytest.approx(ev.accuracy)


def test_real_images_score_far_better_than_noise(evaluator):
    ev, root = evaluator
    real, _ = metrics.real_images(root, metrics.HELDOUT_RANGE)
    noise = np.clip(np.random.default_rng(0).standard_normal(real.shape), -1, 1).astype(np.float32)
    r, n = ev.evaluate(real), ev.evaluate(noise)
    assert r["fd"] * 20 < n["fd"]
    assert r["kid"] < n["kid"] / 20
    assert r["is"] > 2 * n["is"]
    assert r["classes_present"] == 10 and sum(r["class_histogram"]) == 1000
    assert ev.evaluate(real) == r               # deterministic


def test_label_agreement_of_requested_classes(evaluator):
    ev, root = evaluator
    real, labels = metrics.real_images(root, metrics.HELDOUT_RANGE)
    scores = ev.evaluate(real, labels=labels)
    right = scores["label_agreement"]
    wrong = ev.evaluate(real, labels=(np.asarray(labels) + 1) % 10)["label_agreement"]
    assert right > 0.7 and wrong < 0.2
    per_class, counts = scores["label_agreement_per_class"], np.bincount(labels, minlength=10)
    assert len(per_class) == 10 and all(0.0 <= a <= 1.0 for a in per_class)
    assert np.dot(per_class, counts) / counts.sum() == pytest.approx(right)
    assert np.mean(scores["classifier_accuracy_per_class"]) == pytest.approx(ev.accuracy, abs=0.02)
    assert metrics.per_class_agreement([1, 1, 0], [1, 0, 0], 3) == [0.5, 1.0, None]


def test_grid_png_gives_the_same_numbers_as_npy(evaluator, tmp_path):
    ev, root = evaluator
    real, _ = metrics.real_images(root, metrics.HELDOUT_RANGE)
    path = str(tmp_path / "grid.png")
    save_grid(real, path, nrow=32)
    parsed = read_grid(path)
    assert parsed.shape == real.shape
    np.testing.assert_allclose(parsed, real, atol=2.5 / 255)
    a, b = ev.evaluate(real), ev.evaluate(parsed)
    assert b["fd"] == pytest.approx(a["fd"], rel=0.05, abs=0.05)
    assert b["class_histogram"] == pytest.approx(a["class_histogram"], abs=3)


def test_too_few_or_wrong_images_are_rejected(evaluator):
    ev, _ = evaluator
    with pytest.raises(ValueError, match="at least 1000"):
        ev.evaluate(np.zeros((10, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        ev.evaluate(np.zeros((1000, 3, 28, 28), np.float32))


def _evaluate_script(*args):
    import json
    import os
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "evaluate.py")
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_script_scores_what_the_library_scores(evaluator, tiny_run, tmp_path):
    """scripts/evaluate.py on saved images and on a checkpoint gives the library's numbers, and says how it sampled."""
    from ddpm_ms.build import load_model
    from ddpm_ms.samplers import generate
    from ddpm_ms.sampling import Denoiser
    ev, root = evaluator
    held = real_images(root, metrics.HELDOUT_RANGE)[0]
    np.save(tmp_path / "held.npy", held)
    scored = _evaluate_script("--samples", str(tmp_path / "held.npy"))
    assert scored["fd"] == pytest.approx(ev.evaluate(held)["fd"], rel=1e-5) and scored["fd"] < 10
    assert "sampler" not in scored

    path = tiny_run["checkpoint"]
    scored = _evaluate_script("--ckpt", path, "--sampler", "ddim", "--steps", "4", "--eta", "0.5", "--seed", "3",
                              "--num", "200")   # fewer than the reported 1000: the same code, a fifth of the time
    assert {k: scored[k] for k in ("sampler", "steps", "spacing", "eta", "guidance", "ema", "clip_denoised",
                                   "seed")} == {"sampler": "ddim", "steps": 4, "spacing": "uniform", "eta": 0.5,
                                                "guidance": None, "ema": True, "clip_denoised": True, "seed": 3}
    model, sched, _, _ = load_model(path)
    same = generate(Denoiser(model, sched), (1, 28, 28), 200, seed=3, batch_size=250, sampler="ddim",
                    steps=4, eta=0.5, progress=False)
    assert scored["num_images"] == 200 and scored["fd"] == pytest.approx(ev.evaluate(same, 200)["fd"], rel=1e-3)
    assert scored["fd"] > 10 * ev.evaluate(held)["fd"]      # six steps of training are far from real images


def test_compare_samplers_script(evaluator, tiny_run, tmp_path):
    """One table of sampler x steps; its FD for a run equals evaluate.py's for the same sampler and seed."""
    import json
    import os
    import subprocess
    import sys
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tiny_run["checkpoint"]
    proc = subprocess.run([sys.executable, os.path.join(root_dir, "scripts", "compare_samplers.py"), "--ckpt", path,
                           "--runs", "ddim:3:eta=0.5", "dpm++2m:4:spacing=logsnr", "--out", str(tmp_path / "cmp"),
                           "--num", "200"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "cmp" / "compare_samplers.json").read_text())["rows"]
    assert [r["run"] for r in rows] == [{"sampler": "ddim", "steps": 3, "spacing": "uniform", "eta": 0.5},
                                        {"sampler": "dpm++2m", "steps": 4, "spacing": "logsnr"}]
    assert all(r["cached_s"] > 0 and r["first_s"] > 0 and sum(r["class_histogram"]) == 200 for r in rows)
    table = (tmp_path / "cmp" / "compare_samplers.md").read_text()
    assert "| ddim-3 eta=0.5 | 3 |" in table and "| dpm++2m-4 logsnr | 4 |" in table
    assert_figure(tmp_path / "cmp" / "quality_vs_calls.png")
    same = _evaluate_script("--ckpt", path, "--sampler", "ddim", "--steps", "3", "--eta", "0.5", "--num", "200")
    assert rows[0]["fd"] == pytest.approx(same["fd"], rel=1e-6)
    bad = subprocess.run([sys.executable, os.path.join(root_dir, "scripts", "compare_samplers.py"), "--ckpt", path,
                          "--runs", "dpm++2m:4:eta=1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot read 'eta=1'" in bad.stderr and "Traceback" not in bad.stderr
