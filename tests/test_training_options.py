"""Training options end to end on the tiny config: LR scaling, EMA off or every k steps, an image-folder dataset."""
import os

import numpy as np
import pytest

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.config import load_config
from ddpm_ms.trainer import Trainer
from ddpm_ms.samplers import generate
from ddpm_ms.sampling import Denoiser
from ddpm_ms.build import build_run, load_model

from conftest import TINY_YAML as TINY


def _cfg(out, *overrides):
    return load_config(TINY, [f"train.out_dir={out}", "train.gif=false", "train.sample_num=2", *overrides])


@pytest.mark.parametrize("scaling,factor", [("none", 1), ("linear", 3)])
def test_lr_scaling(scaling, factor):
    cfg = load_config(TINY, [f"train.lr_scaling={scaling}"])
    single = build_run(cfg, steps_per_epoch=4).optimizer.learning_rate.learning_rate.asnumpy()
    three = build_run(cfg, steps_per_epoch=4, world_size=3).optimizer.learning_rate.learning_rate.asnumpy()
    np.testing.assert_allclose(single[0], cfg.train.lr, rtol=1e-6)
    np.testing.assert_allclose(three, single * factor, rtol=1e-6)


def test_ema_every_k_steps_closed_form(data_dir, tmp_path):
    """update_every 3 over 7 steps: two updates, from the weights after steps 3 and 6."""
    tr = Trainer.from_config(_cfg(tmp_path, "train.max_steps=7", "ema.update_every=3", "ema.decay=0.5", "ema.warmup=false"))
    start = [p.asnumpy().copy() for p in tr.run.model.trainable_params()]
    after, original = {}, tr.run.train_step

    def step_and_record(*args):
        out = original(*args)
        after[tr.step + 1] = [p.asnumpy().copy() for p in tr.run.model.trainable_params()]
        return out

    tr.run.train_step = step_and_record
    tr.fit(progress=False)
    assert int(tr.run.ema.num_updates.asnumpy()) == 2
    for i, shadow in enumerate(tr.run.ema.shadow):
        expected = 0.5 * (0.5 * start[i] + 0.5 * after[3][i]) + 0.5 * after[6][i]
        np.testing.assert_allclose(shadow.asnumpy(), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(after[6][0], after[7][0])      # step 7 moved the weights but not the average
    data = ckpt.read_checkpoint(ckpt.list_checkpoints(str(tmp_path))[-1])
    assert int(data["ema.num_updates"].asnumpy()) == 2


def test_ema_disabled_through_training_saving_and_sampling(data_dir, tmp_path):
    tr = Trainer.from_config(_cfg(tmp_path, "train.max_steps=3", "ema.enabled=false"))
    assert tr.run.ema is None
    path = tr.fit(progress=False)["checkpoint"]
    data = ckpt.read_checkpoint(path)
    assert not [k for k in data if k.startswith("ema.")]
    model, sched, cfg, _ = load_model(path)             # the raw weights, there being no EMA ones
    for p, q in zip(model.trainable_params(), tr.run.model.trainable_params()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy(), err_msg=p.name)
    images = generate(Denoiser(model, sched), (1, 28, 28), 2, seed=0, batch_size=2, progress=False)
    assert images.shape == (2, 1, 28, 28) and np.isfinite(images).all()
    assert os.path.isfile(tmp_path / "samples_final.png")
    resumed = Trainer.from_config(_cfg(tmp_path, "train.max_steps=4", "ema.enabled=false"), resume="latest")
    assert resumed.fit(progress=False)["step"] == 4


def test_image_folder_dataset_end_to_end(tmp_path):
    """RGB pictures in two class folders -> a conditional 3-channel model at 16x16 -> labelled samples."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("dark", "light")):
        (tmp_path / "pics" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 100, (20, 24, 3)) + 150 * k
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "pics" / cls / f"{i}.png")
    cfg = _cfg(tmp_path / "run", "data.dataset=image_folder", f"data.root={tmp_path / 'pics'}", "data.image_size=16",
               "model.channels=3", "model.num_classes=2", "data.num_samples=null", "train.max_steps=3")
    tr = Trainer.from_config(cfg)
    assert tr.batches.steps_per_epoch == 2                  # 16 pictures, batches of 8
    batches = list(tr.batches.dataset(0).create_tuple_iterator(num_epochs=1, output_numpy=True))  # one epoch
    images = np.concatenate([b for b, _ in batches])
    labels = np.concatenate([l for _, l in batches])
    assert images.shape == (16, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert sorted(labels.tolist()) == [0] * 8 + [1] * 8
    # each folder's pictures carry its label: "dark" pixels are at most 99/255, "light" ones at least 150/255
    assert images[labels == 0].max() < -0.2 < 0.1 < images[labels == 1].min()
    path = tr.fit(progress=False)["checkpoint"]
    model, sched, cfg2, _ = load_model(path)
    assert cfg2.model.channels == 3 and cfg2.data.image_size == 16
    images = generate(Denoiser(model, sched, null_class=2), (3, 16, 16), 4, seed=0, batch_size=4,
                      labels=np.array([0, 1, 0, 1]), guidance=2.0, progress=False)
    assert images.shape == (4, 3, 16, 16) and np.isfinite(images).all()
    assert os.path.getsize(tmp_path / "run" / "samples_final.png") > 0
