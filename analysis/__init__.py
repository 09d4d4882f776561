"""Reading results: calibration metrics, plots, and ArviZ views of the posterior."""

from . import metrics, plots
from .inference_data import KHat, ScaleRow, pareto_khat, scale_table, to_inference_data
from .metrics import classification_metrics, decompose, regression_metrics

__all__ = ["metrics", "plots", "to_inference_data", "pareto_khat", "KHat", "scale_table", "ScaleRow",
           "classification_metrics", "regression_metrics", "decompose"]
