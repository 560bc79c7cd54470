"""Calibration stages: solve (B, G on a calibrator transit) and apply.

Importing this package does not import CASA; the functions do, lazily."""
from .apply import ApplyResult, apply_calibration
from .registry_io import register_solution, tables_for
from .solve import CalSolveParams, CalSolveResult, calibrator_beam, pick_refant, solve_calibration

__all__ = [
    "ApplyResult",
    "CalSolveParams",
    "CalSolveResult",
    "apply_calibration",
    "calibrator_beam",
    "pick_refant",
    "register_solution",
    "solve_calibration",
    "tables_for",
]
