"""Quality during training (train.eval_every): FD/KID rows, best.ckpt, fd_curve.png, and that evaluating changes
neither the training trajectory nor exact resume."""
import os

import numpy as np
import pytest

from ddpm_ms import checkpoint as ckpt
from ddpm_ms.callbacks import Evaluation
from ddpm_ms.config import load_config
from ddpm_ms.monitor import QualityProbe
from ddpm_ms.trainer import Trainer
from ddpm_ms.viz import read_metrics

from conftest import TINY_YAML as TINY, assert_figure


def _cfg(out, *overrides):
    """tiny.yaml: 8 steps per epoch, DDIM-3 samples; evaluation of 16 samples after every epoch."""
    return load_config(TINY, [f"train.out_dir={out}", "train.gif=false", "train.sample_num=2",
                              "train.sample_sampler=ddim", "train.sample_steps=3", "train.eval_every=1",
                              "train.eval_num=16", *overrides])


def _state(trainer):
    r = trainer.run
    weights = {p.name: p.asnumpy().copy() for p in r.model.trainable_params()}
    weights.update({n: s.asnumpy().copy() for n, s in zip(r.ema.names, r.ema.shadow)})
    weights["moment1"] = r.optimizer.moment1[0].asnumpy().copy()
    return weights


def _losses(out):
    return [(r["step"], r["loss"]) for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r]


class ScriptedEvaluator:
    """Returns the FDs it is given in turn, and records the EMA weights it was shown each time."""

    def __init__(self, trainer, fds):
        self.trainer, self.fds, self.seen = trainer, list(fds), []

    def evaluate(self, images, num, labels=None):   # pylint: disable=unused-argument
        self.seen.append(self.trainer.run.ema.shadow[0].asnumpy().copy())
        return {"fd": self.fds.pop(0), "kid": 0.0, "classes_present": 1}


def test_best_ckpt_holds_the_step_with_the_lowest_fd(data_dir, tmp_path):
    """FD 5, 3, 4 after epochs 1-3: best.ckpt is the step-16 state, not the first or the last."""
    tr = Trainer.from_config(_cfg(tmp_path, "train.epochs=3"))
    scripted = ScriptedEvaluator(tr, [5.0, 3.0, 4.0])
    tr.callback(Evaluation).probe = QualityProbe(tr.previewer, scripted, num=16)
    summary = tr.fit(progress=False)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "fd" in r]
    assert [(r["step"], r["fd"]) for r in rows] == [(8, 5.0), (16, 3.0), (24, 4.0)]
    assert all(r["eval_s"] >= 0 and r["eval_num"] == 16 and r["wall_s"] > 0 for r in rows)
    best = ckpt.read_checkpoint(str(tmp_path / "best.ckpt"))
    assert ckpt.checkpoint_position(best) == (16, 2, 0) and summary["best_fd"] == 3.0
    np.testing.assert_array_equal(best[tr.run.ema.names[0]].asnumpy(), scripted.seen[1])
    assert ckpt.list_checkpoints(str(tmp_path))[-1].endswith(ckpt.checkpoint_name(24))   # best is not pruned
    assert_figure(tmp_path / "fd_curve.png")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_evaluation_changes_neither_training_nor_exact_resume(data_dir, tmp_path):
    """20 of 24 steps (3 epochs). The real probe (FD/KID of 16 samples after each epoch) against no evaluation: the same weights, EMA,
    Adam state and losses; and a run stopped at step 12 and resumed gives the same weights and FD rows."""
    plain = Trainer.from_config(_cfg(tmp_path / "plain", "train.epochs=3", "train.max_steps=20", "train.eval_every=0"))
    plain.fit(progress=False)
    assert plain.callback(Evaluation) is None
    evaluated = Trainer.from_config(_cfg(tmp_path / "eval", "train.epochs=3", "train.max_steps=20"))
    evaluated.fit(progress=False)
    fd_rows = [r for r in read_metrics(tmp_path / "eval" / "metrics.jsonl") if "fd" in r]
    assert [r["step"] for r in fd_rows] == [8, 16, 20]   # after epochs 1 and 2, and at the last step
    a, b = _state(plain), _state(evaluated)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _losses(tmp_path / "plain") == _losses(tmp_path / "eval")

    first = Trainer.from_config(_cfg(tmp_path / "resumed", "train.epochs=3", "train.max_steps=12"))
    first.fit(progress=False)
    resumed = Trainer.from_config(_cfg(tmp_path / "resumed", "train.epochs=3", "train.max_steps=20"), resume="latest")
    assert resumed.best_fd == min(r["fd"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "fd" in r)
    resumed.fit(progress=False)
    c = _state(resumed)
    for name in a:
        np.testing.assert_array_equal(b[name], c[name], err_msg=name)
    again = [r for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if "fd" in r]
    # step 12's evaluation (the end of the first launch) stays; the others are the uninterrupted run's numbers
    assert [r["step"] for r in again] == [8, 12, 16, 20]
    for r in again:
        if r["step"] != 12:
            same = next(x for x in fd_rows if x["step"] == r["step"])
            assert (r["fd"], r["kid"]) == pytest.approx((same["fd"], same["kid"]), rel=1e-6)
