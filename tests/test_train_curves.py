"""train.runfolder's curves: every epoch is drawn, even the only one."""

from __future__ import annotations

import pytest

from helpers import has_module


@pytest.mark.skipif(not has_module("matplotlib"), reason="needs matplotlib (the train extra)")
def test_a_one_epoch_run_draws_its_points(tmp_path):
    import matplotlib.pyplot as plt

    from train.runfolder import curves_figure, plot_curves

    rows = [{"epoch": 1, "loss": 1.9, "val_loss": 1.6, "train_acc": 0.35, "val_acc": 0.42}]
    fig = curves_figure(rows)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 4
    # One point of a line without a marker draws nothing: each curve marks its epochs.
    assert all(line.get_marker() not in (None, "None", "", " ") and line.get_markersize() > 0 for line in lines)
    plt.close(fig)
    plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
