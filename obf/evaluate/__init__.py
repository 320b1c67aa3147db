"""Evaluation: bits per byte of the model as served beside the strongest classical compressors,
denoising, conversions measured exactly, generated samples, and the report.
"""

from obf.evaluate.baselines import compressed_sizes
from obf.evaluate.report import render_conversions, render_csv, render_report, render_table
from obf.evaluate.run import evaluate

__all__ = [
    "compressed_sizes",
    "evaluate",
    "render_conversions",
    "render_csv",
    "render_report",
    "render_table",
]
