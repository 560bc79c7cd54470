"""Calibration stages: solve (K, B, G on a calibrator transit), QA, registry, apply.

Importing this package does not import CASA; the functions do, lazily."""
from .apply import ApplyResult, apply_calibration
from .model import calibrator_beam
from .refant import pick_refant
from .registry_io import register_solution, tables_for
from .solve import CalSolveParams, CalSolveResult, solve_calibration

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
