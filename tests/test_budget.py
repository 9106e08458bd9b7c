"""Runs sized by wall time: the planner against its cost model, the warm-up + cosine LR against its closed form
(on the host and in the compiled step), best.ckpt against the noise margin, and a budgeted tiny run: its plan
follows a slowed-down step and re-plans when the step slows again, both recorded everywhere, and a
killed-and-resumed run equals the plan replayed."""
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


def test_a_replan_follows_a_slowdown_keeps_its_cadence_and_the_lr_continuous():
    from ddpm_ms.lr import warmup_cosine
    first = plan(900.0, 225.0, 2000, SPE, COSTS, ckpt_every=1000)
    # at 540 s, step 5000: on time at 0.1 s per step; the machine now takes 0.13 s
    assert budget.replan(first, 900.0, 540.0, 5000, SPE, COSTS, 0.1, 1000)[0] is None, "on time: no re-plan"
    new, costs = budget.replan(first, 900.0, 540.0, 5000, SPE, COSTS, 0.13, 1000)
    assert costs == Costs(0.13, 0.6 * 1.3, 18.0 * 1.3, 0.2 * 1.3)
    args = (540.0, 5000, SPE, costs, 1000, first.eval_every, first.preview_every)
    assert predicted_seconds(new.total_steps, *args) <= 900.0 < predicted_seconds(new.total_steps + 1, *args)
    assert (new.eval_every, new.preview_every) == (first.eval_every, first.preview_every)
    assert new.earlier == ((5000, 2000, first.total_steps),) and new.total_steps < first.total_steps
    # the LR: the first plan's cosine before step 5000, continuous there, min_lr at the new total
    lr, lo, w = 1e-3, 1e-5, 200
    at = lambda s, p: warmup_cosine(s, lr, lo, w, p.total_steps, p.decay_start, p.earlier)   # noqa: E731
    np.testing.assert_allclose(at([2500, 4999], new), at([2500, 4999], first), rtol=1e-12)
    f = (5000 - 2000) / (first.total_steps - 2000)              # the cosine's progress at the re-plan
    np.testing.assert_allclose(at(5000, new), lo + (lr - lo) * 0.5 * (1 + np.cos(np.pi * f)), rtol=1e-12)
    np.testing.assert_allclose(at(new.total_steps, new), lo, rtol=1e-12)
    # a machine that sped up gets more steps; one more re-plan keeps both earlier plans
    faster, _ = budget.replan(new, 900.0, 700.0, 6000, SPE, costs, 0.05, 1000)
    assert faster.total_steps > new.total_steps and faster.earlier == new.earlier + ((6000, new.decay_start,
                                                                                       new.total_steps),)
    np.testing.assert_allclose(at(6000, faster), at(6000, new), rtol=1e-12)


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
BUDGET_S = 90.0


MEASURE_SHARE = 0.35    # the plan after 31.5 s: past the compile and the 12 warm-up steps, so the LR holds a while


def _budgeted(tiny_config, out, *extra):
    return tiny_config(f"train.minutes={BUDGET_S / 60}", "train.warmup_steps=12",
                       f"train.measure_share={MEASURE_SHARE}", "data.num_samples=400", "train.gif=false", "train.sample_num=4", "train.log_every=1",
                       "train.ckpt_every=1000", "train.replan_every=0.15", *extra, out=out)


def _slowed(trainer, seconds, after_plan=None):
    """The test double: the trainer's compiled step, then ``seconds`` of sleep (a slower machine); ``after_plan``
    seconds once the Budget callback (first in the list) has planned (a machine that slowed down)."""
    step = trainer.run.train_step

    def slow(*args):
        out = step(*args)
        planned = after_plan is not None and getattr(trainer.callbacks[0], "plan", None) is not None
        time.sleep(after_plan if planned else seconds)
        return out
    trainer.run.train_step = slow
    return trainer


def _params(trainer):
    return {p.name: p.asnumpy() for p in trainer.run.model.trainable_params()}


def test_a_budgeted_run_plans_from_its_speed_replans_when_it_slows_and_resumes_exactly(tiny_config, tmp_path,
                                                                                        data_dir, monkeypatch):
    from ddpm_ms import checkpoint as ckpt
    from ddpm_ms.callbacks import Budget, Callback
    from ddpm_ms.config import load_config
    from ddpm_ms.lr import warmup_cosine
    from ddpm_ms.trainer import Trainer

    class KillAfterReplan(Callback):               # SIGTERM to ourselves two steps after the re-plan
        plan_step = replan_step = None

        def on_plan(self, trainer, plan):
            if self.plan_step is None:
                self.plan_step = trainer.state.step
            else:
                self.replan_step = trainer.state.step

        def on_step(self, trainer, loss, finite):
            if self.replan_step is not None and trainer.state.step == self.replan_step + 2:
                os.kill(os.getpid(), signal.SIGTERM)

    # on a loaded machine the plan (its first grid compiles) can end late in this short budget: re-plans up to its end
    monkeypatch.setattr(budget, "LAST_REPLAN", 1.0)
    out = tmp_path / "killed"
    # the step sleeps SLEEP_S until the plan, then four times that: the machine slowed down
    tr = _slowed(Trainer.from_config(_budgeted(tiny_config, out)), SLEEP_S, after_plan=4 * SLEEP_S)
    assert tr.total_steps is None and isinstance(tr.callbacks[0], Budget)
    killer = KillAfterReplan()
    tr.callbacks.append(killer)
    first = tr.fit(progress=False)
    p, r = killer.plan_step, killer.replan_step   # the plan waits for the warm-up and MEASURE_SHARE of the budget
    assert first["interrupted"] == signal.SIGTERM and r is not None and first["step"] == r + 2 and p >= 14
    rows = list(tr.folder.rows())
    row, again = next(x for x in rows if "plan" in x), next(x for x in rows if "replan" in x)
    # the plan follows the measured speed: the slowed step is >= SLEEP_S, and the steps fill the budget with it
    costs = Costs(**row["costs"])
    assert costs.step_s >= SLEEP_S
    n = row["plan"]["total_steps"]
    assert row["plan"]["decay_start"] == p and row["budget_s"] == BUDGET_S
    assert row["wall_s"] >= MEASURE_SHARE * BUDGET_S and n > p + 4
    args = (row["wall_s"], p, tr.batches.steps_per_epoch, costs, 1000, row["plan"]["eval_every"],
            row["plan"]["preview_every"], False)
    assert predicted_seconds(n, *args) <= BUDGET_S < predicted_seconds(n + 1, *args)
    assert n - p < (BUDGET_S - row["wall_s"]) / SLEEP_S       # no more steps than the sleep alone allows
    # ... then re-plans at the first check, replan_every (15%) of the budget later, from the slower step: fewer
    # steps, again filling the budget
    n2, p2 = again["replan"]["total_steps"], again["replan"]["decay_start"]
    assert again["step"] == r and again["wall_s"] >= row["wall_s"] + 0.15 * BUDGET_S
    slower = Costs(**again["costs"])
    assert slower.step_s > costs.step_s and r < n2 < n, (n, r, n2)
    args = (again["wall_s"], r, tr.batches.steps_per_epoch, slower, 1000, row["plan"]["eval_every"],
            row["plan"]["preview_every"], False)
    assert predicted_seconds(n2, *args) <= BUDGET_S < predicted_seconds(n2 + 1, *args)
    assert again["replan"]["earlier"] == [[r, p, n]] and p2 == pytest.approx(budget.replanned_start(r, p, n, n2))
    # ... and records both: config.yaml, the checkpoint, the LR (held until the plan, its cosine, then the new one)
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["max_steps"] == n2 and saved["decay_start"] == p2 and saved["earlier_plans"] == [[r, p, n]]
    assert saved["minutes"] == BUDGET_S / 60
    data = ckpt.read_checkpoint(str(out / ckpt.checkpoint_name(r + 2)))
    assert ckpt.checkpoint_config(data).train.max_steps == n2
    assert float(data["ddpm_ms_lr_total_steps"].asnumpy()) == n2
    assert float(data["ddpm_ms_lr_decay_start"].asnumpy()) == np.float32(p2)
    lrs = {x["step"]: x["lr"] for x in rows if "lr" in x}
    for step in (6, 12, p, p + 2, r, r + 1, r + 2):   # a row at step k logs the LR of 0-based step k - 1
        want = warmup_cosine(step - 1, 1e-3, 1e-5, 12, n2, decay_start=p2, earlier=[(r, p, n)])
        assert lrs[step] == pytest.approx(float(want), rel=1e-5), step
    assert lrs[p] == pytest.approx(1e-3) and lrs[p + 2] < 1e-3
    assert abs(lrs[r + 1] - lrs[r]) < 2 * abs(lrs[r] - lrs[r - 1]), "the LR is continuous at the re-plan"
    # resumed with the same config (minutes, no max_steps): it continues the plan, without measuring again
    resumed = Trainer.from_config(_budgeted(tiny_config, out), resume="latest")
    assert resumed.total_steps == n2
    done = resumed.fit(progress=False)
    assert done["step"] == n2 and resumed.callbacks[0].stamps == []
    # the plan replayed uninterrupted from its config.yaml (train.max_steps, as on another machine) switches its LR
    # at the re-plan's step and gives the same weights, bit for bit
    replay = Trainer.from_config(load_config(str(out / "config.yaml"), [f"train.out_dir={tmp_path / 'replay'}"]))
    assert replay.total_steps == n2 and not any(isinstance(c, Budget) for c in replay.callbacks)
    assert replay.fit(progress=False)["step"] == n2
    a, b = _params(resumed), _params(replay)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert int(resumed.run.optimizer.global_step.asnumpy().reshape(-1)[0]) == n2
