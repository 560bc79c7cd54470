"""DSA-110 continuum imaging pipeline library (no Airflow imports here)."""

__version__ = "0.1.0"
