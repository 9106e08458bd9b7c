"""Runs sized by wall time: the planner against its cost model, the warm-up + cosine LR against its closed form
(on the host and in the compiled step), best.ckpt against the noise margin, and a budgeted tiny run: its plan
follows a slowed-down step, is recorded everywhere, and a killed-and-resumed run equals the plan replayed."""
import os
import signal
import time

import numpy as np
import pytest
import yaml

from ddpm_ms import budget
from ddpm_ms.budget import Costs, plan, predicted_seconds

COSTS = Costs(step_s=0.1, preview_s=0.6, eval_s=18.0, ckpt_s=0.2)
SPE = 312          # steps per epoch of the 15-minute recipe (5000 images, batch 16)


def _monitor_seconds(p, done=200, costs=COSTS):
    """Seconds a plan spends on grids and evaluations (the final ones included)."""
    epochs = p.total_steps // SPE - done // SPE
    evals = (p.total_steps // SPE // p.eval_every if p.eval_every else 0) + 1
    return (epochs // p.preview_every + 1) * costs.preview_s + evals * costs.eval_s


def test_the_plan_fills_the_budget_and_one_more_step_would_not():
    p = plan(900.0, 60.0, 200, SPE, COSTS, ckpt_every=1000)
    args = (60.0, 200, SPE, COSTS, 1000, p.eval_every, p.preview_every)
    assert predicted_seconds(p.total_steps, *args) <= 900.0 < predicted_seconds(p.total_steps + 1, *args)
    assert p.predicted_s == pytest.approx(predicted_seconds(p.total_steps, *args), abs=0.05)
    # by hand: the steps get what is left after the start, the monitoring, the checkpoints and the end
    rest = 900 - 60 - _monitor_seconds(p) - budget.FINAL_EXTRA_S - (p.total_steps // 1000 + 1) * COSTS.ckpt_s
    assert abs((p.total_steps - 200) - rest / COSTS.step_s) <= 2


def test_a_slower_step_gives_proportionally_fewer_steps():
    fast = plan(900.0, 60.0, 200, SPE, COSTS, ckpt_every=1000)
    slow = plan(900.0, 60.0, 200, SPE, Costs(0.2, 0.6, 18.0, 0.2), ckpt_every=1000)
    ratio = (slow.total_steps - 200) / (fast.total_steps - 200)
    assert ratio == pytest.approx(0.5, abs=0.01), (fast, slow)


@pytest.mark.parametrize("step_s", [0.03, 0.1, 0.3])
def test_grids_and_evaluations_stay_within_their_share(step_s):
    costs = Costs(step_s, 0.6, 18.0, 0.2)
    p = plan(900.0, 60.0, 200, SPE, costs, ckpt_every=1000, monitor_share=0.05)
    assert _monitor_seconds(p, costs=costs) <= 0.05 * 900 + 1e-9, p
    assert p.total_steps // SPE // p.preview_every <= 10
    hour = plan(3600.0, 60.0, 200, SPE, costs, ckpt_every=1000, monitor_share=0.05)
    assert _monitor_seconds(hour, costs=costs) <= 0.05 * 3600 + 1e-9
    assert hour.eval_every <= hour.total_steps // SPE, "an hour has room for evaluations along the way"


def test_a_budget_already_spent_stops_where_it_is():
    p = plan(60.0, 100.0, 200, SPE, COSTS, ckpt_every=1000)
    assert p.total_steps == 200


def test_without_evaluations_the_plan_has_none():
    p = plan(900.0, 60.0, 200, SPE, COSTS, ckpt_every=1000, evaluate=False)
    assert p.eval_every == 0
    assert p.total_steps > plan(900.0, 60.0, 200, SPE, COSTS, ckpt_every=1000).total_steps


def test_warmup_cosine_closed_form():
    from ddpm_ms.lr import warmup_cosine
    lr, lo, w, n = 1e-3, 1e-5, 200, 5200
    np.testing.assert_allclose(warmup_cosine([0, 99, 199], lr, lo, w, n), [lr / 200, lr / 2, lr])
    np.testing.assert_allclose(warmup_cosine([200, 2700, 5200], lr, lo, w, n), [lr, (lr + lo) / 2, lo])
    s = 200 + 5000 / 3
    np.testing.assert_allclose(warmup_cosine(s, lr, lo, w, n), lo + (lr - lo) * 0.75)   # cos(pi/3) = 1/2
    # held at lr from the warm-up's end to the plan's step P = 1200, then the cosine over [P, N]
    np.testing.assert_allclose(warmup_cosine([199, 200, 700, 1200, 3200, 5200], lr, lo, w, n, decay_start=1200),
                               [lr, lr, lr, lr, (lr + lo) / 2, lo])


def test_the_compiled_step_follows_the_plan_set_after_it_compiled():
    """WarmupCosineLR inside a jit'd Adam step: the LR Adam applies while unplanned (held after the warm-up) and
    after set_plan (an assign into a graph that has already compiled) equals warmup_cosine, step by step."""
    import mindspore as ms
    from mindspore import Tensor, nn
    from ddpm_ms.lr import WarmupCosineLR, warmup_cosine
    net = nn.Dense(3, 1)
    sched = WarmupCosineLR(1e-2, 1e-4, 4, 5)
    opt = nn.Adam(net.trainable_params(), learning_rate=sched)

    def loss(x):
        return net(x).sum()
    grad_fn = ms.value_and_grad(loss, None, opt.parameters)

    @ms.jit
    def step(x):
        lr = opt.get_lr()          # read before the update: the LR of this step
        opt(grad_fn(x)[1])
        return lr

    x = Tensor(np.ones((2, 3), np.float32))
    got = []
    for s in range(11):
        if s == 6:                     # warm-up 0-3, held at 1e-2 on 4 and 5, the cosine from 6 to 12
            sched.set_plan(6, 12)
        got.append(float(step(x).asnumpy()))
    np.testing.assert_allclose(got, warmup_cosine(np.arange(11), 1e-2, 1e-4, 4, 12, decay_start=6), rtol=1e-5)
    np.testing.assert_allclose(got[3:7], 1e-2, rtol=1e-6)
    assert got[7] < got[6] and sched.numpy(8) == pytest.approx(got[8], rel=1e-5)


class _Folder:
    def __init__(self):
        self.saved = []

    def save_checkpoint(self, state, name=None):
        self.saved.append(name)


class _Trainer:
    state = None


@pytest.mark.parametrize("margin,fds,kept", [
    (0.0, [30.0, 29.9, 31.0, 25.0, 24.99], [30.0, 29.9, 25.0, 24.99]),     # any lower FD
    (0.1, [30.0, 29.9, 28.0, 26.9, 26.0, 24.0], [30.0, 26.9, 24.0]),       # only 10% lower than the kept one
])
def test_best_checkpoint_ignores_differences_within_the_noise(margin, fds, kept):
    from ddpm_ms.callbacks import BestCheckpoint
    folder = _Folder()
    keeper = BestCheckpoint(folder, margin=margin)
    replaced = []
    for step, fd in enumerate(fds):
        before = len(folder.saved)
        keeper.on_eval(_Trainer(), {"step": step, "fd": fd, "kid": 0.0, "eval_num": 1000, "eval_s": 1.0})
        if len(folder.saved) > before:
            replaced.append(fd)
    assert replaced == kept and keeper.best_fd == kept[-1]


# ------------------------------------------------------------------------------------------------ a budgeted run

SLEEP_S = 0.2
BUDGET_S = 60.0


MEASURE_SHARE = 0.5     # the plan after 30 s: past the compile and the 12 warm-up steps, so the LR holds a while


def _budgeted(tiny_config, out, *extra):
    return tiny_config(f"train.minutes={BUDGET_S / 60}", "train.warmup_steps=12",
                       f"train.measure_share={MEASURE_SHARE}", "data.num_samples=400", "train.gif=false", "train.sample_num=4", "train.log_every=1",
                       "train.ckpt_every=1000", *extra, out=out)


def _slowed(trainer, seconds):
    """The test double: the trainer's compiled step, then ``seconds`` of sleep (a slower machine)."""
    step = trainer.run.train_step

    def slow(*args):
        out = step(*args)
        time.sleep(seconds)
        return out
    trainer.run.train_step = slow
    return trainer


def _params(trainer):
    return {p.name: p.asnumpy() for p in trainer.run.model.trainable_params()}


def test_a_budgeted_run_plans_from_its_speed_and_resumes_its_plan_exactly(tiny_config, tmp_path, data_dir):
    from ddpm_ms import checkpoint as ckpt
    from ddpm_ms.callbacks import Budget, Callback
    from ddpm_ms.lr import warmup_cosine
    from ddpm_ms.trainer import Trainer

    class KillAfterPlan(Callback):               # SIGTERM to ourselves two steps after the plan
        plan_step = None

        def on_plan(self, trainer, plan):
            self.plan_step = trainer.state.step

        def on_step(self, trainer, loss, finite):
            if self.plan_step is not None and trainer.state.step == self.plan_step + 2:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "killed"
    tr = _slowed(Trainer.from_config(_budgeted(tiny_config, out)), SLEEP_S)
    assert tr.total_steps is None and isinstance(tr.callbacks[0], Budget)
    killer = KillAfterPlan()
    tr.callbacks.append(killer)
    first = tr.fit(progress=False)
    p = killer.plan_step                            # the plan waits for the warm-up and MEASURE_SHARE of the budget
    assert first["interrupted"] == signal.SIGTERM and first["step"] == p + 2 and p >= 14   # >= 2 steps held
    keeper = tr.callbacks[0]
    # the plan follows the measured speed: the slowed step is >= SLEEP_S, and the steps fill the budget with it
    assert keeper.costs.step_s >= SLEEP_S
    n = keeper.plan.total_steps
    row = next(r for r in tr.folder.rows() if "plan" in r)
    assert row["plan"]["total_steps"] == n and row["plan"]["decay_start"] == p and row["budget_s"] == BUDGET_S
    assert row["wall_s"] >= MEASURE_SHARE * BUDGET_S and n > p + 4
    args = (row["wall_s"], p, tr.batches.steps_per_epoch, keeper.costs, 1000, keeper.plan.eval_every,
            keeper.plan.preview_every, False)
    assert predicted_seconds(n, *args) <= BUDGET_S < predicted_seconds(n + 1, *args)
    assert n - p < (BUDGET_S - row["wall_s"]) / SLEEP_S       # no more steps than the sleep alone allows
    # ... and is recorded: config.yaml, the checkpoint, the LR (held at lr until the plan, then the cosine)
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["max_steps"] == n and saved["decay_start"] == p and saved["minutes"] == BUDGET_S / 60
    data = ckpt.read_checkpoint(str(out / ckpt.checkpoint_name(p + 2)))
    assert ckpt.checkpoint_config(data).train.max_steps == n
    assert float(data["ddpm_ms_lr_total_steps"].asnumpy()) == n and float(data["ddpm_ms_lr_decay_start"].asnumpy()) == p
    lrs = {r["step"]: r["lr"] for r in tr.folder.rows() if "lr" in r}
    for step in (6, 12, p, p + 2):                  # a row at step k logs the LR of 0-based step k - 1
        assert lrs[step] == pytest.approx(float(warmup_cosine(step - 1, 1e-3, 1e-5, 12, n, decay_start=p)), rel=1e-6)
    assert lrs[p] == pytest.approx(1e-3) and lrs[p + 2] < 1e-3
    # resumed with the same config (minutes, no max_steps): it continues the plan, without measuring again
    resumed = Trainer.from_config(_budgeted(tiny_config, out), resume="latest")
    assert resumed.total_steps == n
    done = resumed.fit(progress=False)
    assert done["step"] == n and resumed.callbacks[0].stamps == []
    # the plan replayed uninterrupted (train.max_steps, as on another machine) gives the same weights, bit for bit
    replay = Trainer.from_config(_budgeted(tiny_config, tmp_path / "replay", f"train.max_steps={n}",
                                           f"train.decay_start={p}", f"train.eval_every={saved['eval_every']}",
                                           f"train.preview_every={saved['preview_every']}"))
    assert replay.total_steps == n and not any(isinstance(c, Budget) for c in replay.callbacks)
    assert replay.fit(progress=False)["step"] == n
    a, b = _params(resumed), _params(replay)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(resumed.run.optimizer.global_step.asnumpy().reshape(-1)[0]) == n
