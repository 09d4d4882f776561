"""The calibration-anatomy script reads finished cells: its columns and its split are known sums."""

import importlib.util
import json
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "calibration_anatomy.py"


def load_script():
    spec = importlib.util.spec_from_file_location("calibration_anatomy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cell(root: Path, name: str, probs: list[list[float]], accuracy: float, ece: float, mi: float = 0.0,
               nll: float = 1.0, ood_auroc: float | None = None):
    cell = root / "cells" / name
    cell.mkdir(parents=True)
    extra = {} if ood_auroc is None else {"ood_auroc": ood_auroc}
    (cell / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "ece": ece, "mutual_information": mi,
                                                   "nll": nll, **extra}))
    np.savez(cell / "predictions.npz", test_probs=np.asarray(probs, dtype=np.float32))


def test_confidence_over_confidence_and_the_mean_and_draws_split(tmp_path):
    anatomy = load_script()
    root = tmp_path / "task"
    for seed, (lora, mean, sampled) in enumerate([(20.0, 12.0, 10.0), (30.0, 16.0, 15.0)]):
        write_cell(root, f"lora-seed{seed}", [[0.9, 0.1], [0.7, 0.3]], 0.5, lora)  # confidence 80 %
        write_cell(root, f"blob-mean-seed{seed}", [[0.6, 0.4], [0.6, 0.4]], 0.5, mean)
        write_cell(root, f"blob-seed{seed}", [[0.55, 0.45], [0.55, 0.45]], 0.5, sampled, mi=0.02)
    write_cell(root, "blob-seed2", [[0.5, 0.5], [0.5, 0.5]], 0.5, 99.0, mi=0.02)  # no twin: left out of the split
    found = anatomy.cells(root)
    assert list(found) == ["lora", "blob", "blob-mean"]  # the registry's order
    assert abs(found["lora"][0]["confidence"] - 80.0) < 1e-4 and found["blob"][0]["mi"] == 0.02
    text = anatomy.anatomy(root)
    assert "| lora | 2 | 50.00 ± 0.00 | 80.00 ± 0.00 | 30.00 ± 0.00 | 25.00 ± 7.07 | 0.0000 |" in text
    # blob's ECE change -12.5 = the mean function's -11.0 + the draws' -1.5, over seeds 0 and 1 only
    assert "| blob | 2 | -12.50 | -11.00 | -1.50 | +0.000 | +0.000 | +0.000 | +0.00 | +0.00 | +0.00 |" in text


def test_twins_run_in_another_folder_split_the_nll_and_accuracy_too(tmp_path):
    anatomy = load_script()
    suite, twins = tmp_path / "suite" / "task", tmp_path / "twins" / "task"
    write_cell(suite, "lora-seed0", [[0.9, 0.1]], 0.80, 20.0, nll=1.00)
    write_cell(suite, "mean-field-lora-seed0", [[0.8, 0.2]], 0.82, 15.0, mi=0.02, nll=0.70)
    write_cell(twins, "mean-field-lora-mean-seed0", [[0.85, 0.15]], 0.83, 16.0, nll=0.75)
    assert "mean-field-lora-mean" not in anatomy.cells(suite)
    text = anatomy.anatomy(suite, twins)
    # NLL -0.30 = the mean's -0.25 + the draws' -0.05; accuracy +2 = +3 from the mean, -1 from the draws
    assert "| mean-field-lora | 1 | -5.00 | -4.00 | -1.00 | -0.300 | -0.250 | -0.050 | +2.00 | +3.00 | -1.00 |" in text
    assert "OOD AUROC" not in text  # no cell scored an OOD set


def test_the_ood_auroc_change_splits_like_the_others_when_every_cell_scored_an_ood_set(tmp_path):
    anatomy = load_script()
    suite, twins = tmp_path / "suite" / "task", tmp_path / "twins" / "task"
    write_cell(suite, "lora-seed0", [[0.9, 0.1]], 0.80, 20.0, ood_auroc=0.90)
    write_cell(suite, "mean-field-lora-seed0", [[0.8, 0.2]], 0.80, 15.0, ood_auroc=0.85)
    write_cell(twins, "mean-field-lora-mean-seed0", [[0.85, 0.15]], 0.80, 16.0, ood_auroc=0.88)
    text = anatomy.anatomy(suite, twins)
    # AUROC -0.05 = the mean's -0.02 + the draws' -0.03
    assert "| Δ OOD AUROC | mean function | averaging |" in text
    assert text.splitlines()[-1].endswith("| -0.050 | -0.020 | -0.030 |")


def test_scales_row_reads_the_cells_scales_and_the_recipe_start(tmp_path):
    anatomy = load_script()
    root = tmp_path / "task"
    for seed, sites in enumerate([[0.02, 0.03, 0.04], [0.05, 0.06, 0.07]]):  # site medians 0.03 and 0.06
        write_cell(root, f"mean-field-lora-seed{seed}", [[0.8, 0.2]], 0.8, 10.0)
        cell = root / "cells" / f"mean-field-lora-seed{seed}"
        metrics = json.loads((cell / "metrics.json").read_text())
        metrics["method_settings"] = {"base_fit": {"guide": "mean-field", "init_scale": 0.03}, "post_hoc": None}
        (cell / "metrics.json").write_text(json.dumps(metrics))
        (cell / "scales.json").write_text(json.dumps([{"posterior_scale": v, "prior_scale": 1.0} for v in sites]))
    # the median over seeds of 0.03 and 0.06 is 0.045: 1.5x the start 0.03; the range spans both seeds
    assert "| mean-field-lora | 2 | 0.03 | 0.045 | 0.02-0.07 | 1.50x | 1 |" in anatomy.anatomy(root, with_scales=True)
    assert "Posterior scales" not in anatomy.anatomy(root)
