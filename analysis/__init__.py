"""Reading results: calibration metrics, plots, and ArviZ views of the posterior."""

from . import metrics, plots, stats, tables
from .inference_data import KHat, ScaleRow, pareto_khat, scale_table, to_inference_data
from .metrics import (CoverageCurve, Decomposition, ECEFloor, ReliabilityBins, accuracy_coverage_curve,
                      classification_metrics, decompose, ece, ece_floor, mce, ood_auroc, regression_metrics,
                      reliability_bins, selective_auc)
from .tables import markdown_table

__all__ = ["metrics", "plots", "stats", "to_inference_data", "pareto_khat", "KHat", "scale_table", "ScaleRow",
           "classification_metrics", "regression_metrics", "decompose", "Decomposition", "ece", "mce", "ece_floor",
           "ECEFloor", "reliability_bins", "ReliabilityBins", "accuracy_coverage_curve", "CoverageCurve",
           "selective_auc", "ood_auroc", "tables", "markdown_table"]
