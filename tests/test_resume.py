"""Exact resume and atomic checkpoints on the tiny config with the real (shared) data."""
import json
import os

import numpy as np
import pytest
import mindspore as ms

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.config import load_config
from ddpm_ms.batches import BatchSource
from ddpm_ms.trainer import Trainer
from ddpm_ms.samplers import Recorder

from conftest import TINY_YAML as TINY


def _cfg(out, *overrides):
    return load_config(TINY, [f"train.out_dir={out}", "train.gif=false", "train.sample_num=2", *overrides])


def _params(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_epoch_order_depends_only_on_seed_and_epoch(data_dir, tmp_path):
    cfg = _cfg(tmp_path)
    source = BatchSource(cfg.data, cfg.train.batch_size, cfg.train.seed, cfg.diffusion.timesteps)

    def first(epoch):
        it = source.dataset(epoch).create_tuple_iterator(num_epochs=1, output_numpy=True)
        return next(it)[0]
    a, b, c = first(0), first(0), first(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (8, 1, 28, 28) and a.min() >= -1.0 and a.max() <= 1.0 + 1e-6


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """10 steps in one go; the epoch-end grid (EMA weights swapped in and out) comes after step 8."""
    if not os.path.isdir(os.environ.get("DDPM_MS_DATA_DIR") or ""):
        pytest.skip("DDPM_MS_DATA_DIR does not point at the Fashion-MNIST IDX files")
    out = tmp_path_factory.mktemp("straight")
    trainer = Trainer.from_config(_cfg(out, "train.max_steps=10"))
    trainer.fit(progress=False)
    return trainer, out


def test_resume_is_exact(straight, tmp_path):
    # 10 steps straight vs 5 steps, stop, resume for 5 more; the epoch boundary (8 steps) is crossed after resume.
    straight, _ = straight
    first = Trainer.from_config(_cfg(tmp_path / "b", "train.max_steps=5"))
    first.fit(progress=False)
    assert first.step == 5
    resumed = Trainer.from_config(_cfg(tmp_path / "b", "train.max_steps=10"), resume="latest")
    assert (resumed.step, resumed.epoch, resumed.step_in_epoch) == (5, 0, 5)
    resumed.fit(progress=False)
    pa, pb = _params(straight.run.model), _params(resumed.run.model)
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    assert float(straight.run.loss_scaler.scale_value.asnumpy()) == float(resumed.run.loss_scaler.scale_value.asnumpy())
    np.testing.assert_array_equal(straight.run.optimizer.moment1[0].asnumpy(),
                                  resumed.run.optimizer.moment1[0].asnumpy())
    # the EMA weights and their update count continue exactly too
    assert int(resumed.run.ema.num_updates.asnumpy()) == 10
    for name, a, b in zip(straight.run.ema.names, straight.run.ema.shadow, resumed.run.ema.shadow):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy(), err_msg=name)


def test_preview_grids_leave_training_untouched(straight, tmp_path, monkeypatch):
    # the epoch-end grid swaps the EMA weights in and out; the compiled train step must go on from the raw ones
    shown, shown_dir = straight

    def no_preview(self, num, seed=0, callback=None):
        return np.zeros((num, 1, 28, 28), np.float32)

    monkeypatch.setattr(Trainer, "sample", no_preview)
    hidden = Trainer.from_config(_cfg(tmp_path, "train.max_steps=10"))
    hidden.fit(progress=False)
    pa, pb = _params(shown.run.model), _params(hidden.run.model)
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
    saved = ckpt.read_checkpoint(ckpt.list_checkpoints(str(shown_dir))[-1])
    np.testing.assert_array_equal(saved["init_conv.weight"].asnumpy(), pb["init_conv.weight"])


def test_checkpoint_contents_and_keep_last(data_dir, tmp_path):
    tr = Trainer.from_config(_cfg(tmp_path, "train.max_steps=12", "train.ckpt_every=4", "train.keep_last=2"))
    tr.fit(progress=False)
    files = ckpt.list_checkpoints(str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["ckpt_step00000008.ckpt", "ckpt_step00000012.ckpt"]
    data = ckpt.read_checkpoint(files[-1])
    assert ckpt.checkpoint_position(data) == (12, 1, 4)
    assert ckpt.checkpoint_config(data).model.dim == 8
    assert "moment1.init_conv.weight" in data and "loss_scaler.scale_value" in data
    assert "ema.init_conv.weight" in data and int(data["ema.num_updates"].asnumpy()) == 12
    assert os.path.isfile(tmp_path / "config.yaml")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_interrupted_save_keeps_previous_checkpoint(data_dir, tmp_path, monkeypatch):
    tr = Trainer.from_config(_cfg(tmp_path, "train.max_steps=2"))
    tr.fit(progress=False)
    path = os.path.join(tmp_path, ckpt.checkpoint_name(2))
    before = open(path, "rb").read()

    def broken_save(obj, file_name, **kwargs):
        with open(file_name, "wb") as f:
            f.write(before[: len(before) // 3])         # half-written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "save_checkpoint", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_state(path, ckpt.TrainingState(tr.config, tr.run.model, tr.run.optimizer, tr.run.loss_scaler,
                                                 step=3, epoch=0, step_in_epoch=3))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(path)) == (2, 0, 2)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_signal_saves_and_stops(data_dir, tmp_path):
    import signal
    tr = Trainer.from_config(_cfg(tmp_path, "train.max_steps=10"))
    original = tr.run.train_step

    def step_then_signal(*args):
        out = original(*args)
        if tr.step == 2:      # the loop increments after the call: this is the 3rd step
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.run.train_step = step_then_signal
    summary = tr.fit(progress=False)
    assert summary["interrupted"] == signal.SIGTERM and summary["step"] == 3
    assert ckpt.checkpoint_position(ckpt.read_checkpoint(summary["checkpoint"])) == (3, 0, 3)


def test_preview_grids_follow_sample_sampler(data_dir, tmp_path):
    tr = Trainer.from_config(_cfg(tmp_path, "train.sample_sampler=ddim", "train.sample_steps=3"))
    rec = Recorder()
    images = tr.sample(2, callback=rec)
    assert images.shape == (2, 1, 28, 28) and len(rec.t) == 3     # one frame per DDIM step
    tr = Trainer.from_config(_cfg(tmp_path / "ddpm"))
    rec = Recorder()
    tr.sample(2, callback=rec)
    assert rec.t == list(range(tr.run.sched.num_timesteps - 1, -1, -1))


def test_resume_trims_replayed_metrics_and_clears_stale_temporaries(data_dir, tmp_path):
    """Resuming at step 4 of an 8-step run: rows 6 and 8 will be logged again, so they go; so do dead writes."""
    Trainer.from_config(_cfg(tmp_path, "train.max_steps=8", "train.ckpt_every=4", "train.keep_last=3")).fit(progress=False)
    stale = [tmp_path / ".tmp-99999-ckpt_step00000012.ckpt", tmp_path / ".tmp-99999-ckpt_step00000012.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 9, "lo')                                    # a row torn by a kill
    resumed = Trainer.from_config(_cfg(tmp_path, "train.max_steps=8"), resume=str(tmp_path / ckpt.checkpoint_name(4)))
    steps = lambda: [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
    assert steps() == [2, 4]
    assert not any(p.exists() for p in stale)
    resumed.fit(progress=False)
    assert steps() == [2, 4, 6, 8]
