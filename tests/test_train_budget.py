"""Training to a time budget (--time) and the lines that keep a long run from being silent.

Durations come from ``train.fit.clock``; these tests replace it with a fake clock that only
training steps move, so a plan and its deadline are checked exactly, on any machine.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from runtime.errors import OptionError
from train.budget import Speed, format_duration, parse_duration, plan

FAST = dict(model="tiny", batch_size=16, val_images=10, seed=3)


# -- the arithmetic, without TensorFlow ------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("2m", 120), ("1.5h", 5400), ("1h30m", 5400),
                                           ("120", 120), ("2 m", 120)])
def test_durations_read_as_a_user_writes_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "1h30", "", "m", "2x", "5s"])
def test_a_duration_that_is_not_one_is_refused_in_one_line(text):
    with pytest.raises(OptionError, match="--time"):
        parse_duration(text)


def test_format_duration_picks_the_unit_a_person_would():
    assert [format_duration(s) for s in (45, 150, 7200)] == ["45 s", "2.5 min", "2.0 h"]


def test_plan_fills_the_time_and_pays_for_every_epoch_begun():
    speed = Speed(step_s=0.5, first_step_s=2.0, batch_size=64)
    # 100 s at 0.5 s a step, no overhead: 200 steps, 4 epochs of 50.
    assert plan(100, speed, steps_per_epoch=50, epoch_overhead_s=0).steps == 200
    # 5 s for each epoch begun and 3 s to recompile: 0.5 n + 5 ceil(n / 50) + 3 <= 100 -> n = 154.
    p = plan(100, speed, steps_per_epoch=50, epoch_overhead_s=5, restart_s=3)
    assert (p.steps, p.epochs) == (154, 4)
    assert 0.5 * 154 + 5 * 4 + 3 <= 100 < 0.5 * 155 + 5 * 4 + 3
    # Taking back the steps an overrun costs also gives back epochs' overheads, which buy steps
    # again: 0.5 n + 20 ceil(n / 50) <= 120 -> n = 120 (the first cut alone would leave 40).
    assert plan(120, speed, steps_per_epoch=50, epoch_overhead_s=20).steps == 120
    # No time left still trains a step: a run always ends with a model.
    assert plan(0, speed, steps_per_epoch=50, epoch_overhead_s=5).steps == 1


# -- a budgeted run, on a fake clock ---------------------------------------------------------

class FakeClock:
    """Time that moves only when a training step ends: ``step_s`` for each (then ``later_s``
    once ``slow_after`` steps are done in all), so a run's speed is what the test says."""

    def __init__(self, step_s: float, later_s: float | None = None, slow_after: int = 0):
        self.now, self.steps = 0.0, 0
        self.step_s, self.later_s, self.slow_after = step_s, later_s, slow_after

    def __call__(self) -> float:
        return self.now

    def step(self) -> None:
        self.steps += 1
        slow = self.later_s is not None and self.steps > self.slow_after
        self.now += self.later_s if slow else self.step_s


@pytest.fixture
def fake_clock(monkeypatch):
    pytest.importorskip("tensorflow")
    import keras

    import train.fit

    def install(step_s: float, **kw) -> FakeClock:
        clock = FakeClock(step_s, **kw)
        monkeypatch.setattr(train.fit, "clock", clock)
        original = keras.callbacks.CallbackList.on_train_batch_end

        def on_train_batch_end(self, batch, logs=None):
            clock.step()  # before the callbacks read the clock, as a real step would be
            return original(self, batch, logs)

        monkeypatch.setattr(keras.callbacks.CallbackList, "on_train_batch_end", on_train_batch_end)
        return clock

    return install


END_RESERVE_S = 3.0  # train.fit's, read there without importing TensorFlow at collection


def _fit_budget(budget_s, run, data, **kw):
    from train.config import TrainConfig
    from train.fit import END_RESERVE_S as reserve
    from train.fit import FitControl, fit

    assert reserve == END_RESERVE_S
    lines = []
    result = fit(TrainConfig(**FAST, time_budget=budget_s), out=run, data=data, quiet=True, log=lines.append,
                 control=FitControl(started=0.0), **kw)
    return result, lines, json.loads((run / "config.json").read_text())["config"]


def test_a_budget_is_planned_from_the_timed_steps_and_kept(folder_dataset, tmp_path, fake_clock):
    clock = fake_clock(step_s=0.5)
    result, lines, config = _fit_budget(20.0, tmp_path / "run", folder_dataset)
    # 50 training images in batches of 16: 4 steps an epoch. The probe times one pass at most
    # (the first step, then 3 compiled ones: 2 s). What is left, 20 - 2 - 3 (END_RESERVE_S)
    # = 15 s, pays for 30 steps of 0.5 s: 8 epochs begun, the last cut to 2 steps.
    assert config["steps"] == 30 and config["epochs"] == 8
    assert any(line.startswith("time budget 20 s:") and "speed: 32 images/s (0.50 s a step of 16)" in line
               for line in lines)
    assert any(line.startswith("planned: 30 steps (7.50 epochs of 4)") for line in lines)
    assert result.epochs_done == 8
    assert clock.now <= 20.0  # the whole run, its timed steps included, inside the budget
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["finished"] and (tmp_path / "run" / "model.keras").is_file()
    assert not any("time is up" in line for line in lines)


def test_a_run_slower_than_planned_ends_at_the_deadline_with_a_model(folder_dataset, tmp_path, fake_clock):
    # Measured at 0.5 s a step, then every step takes 2 s: the plan cannot hold.
    clock = fake_clock(step_s=0.5, later_s=2.0, slow_after=5)
    result, lines, config = _fit_budget(20.0, tmp_path / "run", folder_dataset)
    assert any(line.startswith("time is up at step") and "of the 30 planned" in line for line in lines)
    assert clock.now <= 20.0 - END_RESERVE_S  # it stops at the deadline, keeping END_RESERVE_S
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["finished"] and (tmp_path / "run" / "model.keras").is_file()
    assert result.epochs_done < 8


def test_an_unbudgeted_run_tells_its_speed_precision_and_length(folder_dataset, tmp_path, fake_clock):
    from train.config import TrainConfig
    from train.fit import fit

    fake_clock(step_s=0.25)
    lines = []
    fit(TrainConfig(**FAST, epochs=2, precision="float32"), out=tmp_path / "run", data=folder_dataset, quiet=True,
        log=lines.append)
    speed = [line for line in lines if line.startswith("speed:")]
    assert speed == ["speed: 64 images/s (0.25 s a step of 16); float32 (asked for with --precision); "
                     "an epoch ~1 s, the run ~2 s"]


def test_a_run_of_hours_says_so_and_what_to_do(folder_dataset, tmp_path, fake_clock):
    from train.config import TrainConfig
    from train.fit import fit

    fake_clock(step_s=3600.0)  # an hour a step: 8 steps
    lines = []
    fit(TrainConfig(**FAST, epochs=2), out=tmp_path / "run", data=folder_dataset, quiet=True, log=lines.append)
    warning = [line for line in lines if line.startswith("warning: at this speed")]
    assert len(warning) == 1 and "about 8.0 h" in warning[0] and "--time" in warning[0] and "quick" in warning[0]


def test_a_log_gets_a_line_at_least_every_30_s_within_an_epoch(folder_dataset, tmp_path, fake_clock):
    from train.config import TrainConfig
    from train.fit import fit

    fake_clock(step_s=20.0)  # 4 steps of 20 s: lines after 40 s and 80 s (never more than 30 s apart + a step)
    lines = []
    fit(TrainConfig(**FAST, epochs=1), out=tmp_path / "run", data=folder_dataset, quiet=True, log=lines.append)
    beats = [line for line in lines if line.startswith("  epoch 1/1: step")]
    assert beats == ["  epoch 1/1: step 2/4, loss " + beats[0].split("loss ")[1].split(",")[0]
                     + ", 1 images/s, ~40 s to the epoch's end", beats[1]]
    assert beats[1].startswith("  epoch 1/1: step 4/4,") and beats[1].endswith("~0 s to the epoch's end")


def test_time_and_epochs_together_are_refused_before_tensorflow(tmp_path, folder_dataset):
    from train.cli import main

    result = CliRunner().invoke(main, ["--data", str(folder_dataset), "--model", "tiny", "--time", "2m",
                                       "--epochs", "3", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and "give --time or --epochs, not both" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["--data", str(folder_dataset), "--time", "soon"])
    assert result.exit_code != 0 and "--time 'soon': give a duration such as 90s" in result.output
