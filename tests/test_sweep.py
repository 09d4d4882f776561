"""Comparison cells on Ray workers: the same cells, and so the same table, as one process."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import reviews

from pyro_bhpeft.compare import Protocol, run_compare
from pyro_bhpeft.compare.sweep import cell_groups
from pyro_bhpeft.data import load_files

METHODS = ("lora", "temperature", "tfb", "mean-field")
COSTS = ("train_seconds", "predict_seconds", "peak_mb")


def test_cells_that_share_a_fit_run_in_one_task():
    groups = cell_groups(METHODS, (0, 1))
    assert [("lora", 0), ("temperature", 0), ("tfb", 0)] in groups
    assert [("mean-field", 0)] in groups and len(groups) == 4


def test_zero_workers_is_one_line_and_writes_nothing(tmp_path):
    from pyro_bhpeft.config import ConfigError

    with pytest.raises(ConfigError, match="^workers must be at least 1, got 0$"):
        run_compare(Protocol(), tmp_path / "cmp", methods=("lora",), workers=0)
    assert not (tmp_path / "cmp").exists()


def test_two_ray_workers_give_the_table_of_one_process(tiny_backbone, tmp_path):
    pytest.importorskip("ray")
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    reviews(48).to_csv(train, index=False)
    reviews(16, seed=1).to_csv(test, index=False)
    data = load_files(train, eval_files={"validation": test, "test": test}, text_column="review",
                      label_column="sentiment")
    protocol = Protocol(task="reviews", backbone=tiny_backbone, train_size=40, eval_size=16, epochs=1, batch_size=8,
                        max_length=12, samples=2, laplace_examples=6, max_steps=2, ood_task="")
    tables = []
    for workers in (1, 2):
        out = tmp_path / f"cmp-{workers}"
        run_compare(protocol, out, methods=METHODS, seeds=(0, 1), data=data, progress=False, workers=workers)
        table = pd.read_csv(out / "comparison.csv").set_index("method")
        tables.append(table[[c for c in table.columns if not c.startswith(COSTS)]])
    assert sorted(tables[0].index) == sorted(METHODS)
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_a_method_registered_only_in_the_driver_runs_on_ray_workers(tiny_backbone, tmp_path):
    pytest.importorskip("ray")
    from pyro_bhpeft.compare import METHODS as REGISTRY, Method, register_method

    train = tmp_path / "train.csv"
    reviews(24).to_csv(train, index=False)
    data = load_files(train, eval_files={"validation": train, "test": train}, text_column="review",
                      label_column="sentiment")
    protocol = Protocol(task="reviews", backbone=tiny_backbone, train_size=16, eval_size=8, epochs=1, batch_size=8,
                        max_length=12, samples=2, max_steps=1, ood_task="")
    register_method("driver-only", Method.sampled("MAP, registered in this process only", {"guide": "map"},
                                                  point_mass=True))
    try:
        run_compare(protocol, tmp_path / "cmp", methods=("driver-only",), seeds=(0, 1), data=data, progress=False,
                    workers=2)
    finally:
        REGISTRY.unregister("driver-only")
    assert (tmp_path / "cmp" / "cells" / "driver-only-seed1" / "metrics.json").exists()
