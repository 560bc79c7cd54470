"""Imaging parameters: one typed, frozen object with defaults that run the demo.

Built from configuration and overridden per run by DAG Params, so it converts
to and from a plain JSON-able dict (``to_dict`` / ``from_dict``)."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, fields
from typing import Any

BACKENDS = ("auto", "tclean", "wsclean")
GRIDDERS = ("wproject", "standard")
DATACOLUMNS = ("auto", "data", "corrected")


@dataclass(frozen=True)
class ImagingParams:
    """How to image one MeasurementSet (Stokes I, multi-frequency synthesis).

    backend: 'auto' (wsclean if on PATH, else tclean), 'tclean' or 'wsclean'.
    imsize: pixels per side; None derives it from ``fov_deg`` and the cell.
    cell_arcsec: None = 1/``oversample`` of lambda_min / B_max from the MS uvw.
    threshold_jy: None = automatic, stop at ``auto_threshold_sigma`` x the
        residual rms (tclean ``nsigma``, wsclean ``-auto-threshold``).
    pblimit: primary-beam level below which the pb-corrected image is NaN.
    beam_nfreq: frequencies across the band averaged in the drift beam.
    gridder: tclean gridder ('wproject' with ``wprojplanes`` -1 = automatic,
        the like-for-like counterpart of WSClean's w-gridder).
    datacolumn: 'auto' = CORRECTED_DATA when present, else DATA.
    threads: wsclean ``-j`` (None = all cores); tclean runs serially.
    """

    backend: str = "auto"
    imsize: int | None = None
    cell_arcsec: float | None = None
    fov_deg: float = 3.5
    oversample: float = 8.0  # N-S arm + robust 0 give a minor axis ~0.45 lambda/B: keep >= 3.5 px per beam
    weighting: str = "briggs"
    robust: float = 0.0
    niter: int = 1000
    threshold_jy: float | None = None
    auto_threshold_sigma: float = 3.0
    mgain: float = 0.8
    gain: float = 0.1
    gridder: str = "wproject"
    wprojplanes: int = -1
    pblimit: float = 0.2
    beam_nfreq: int = 3
    datacolumn: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if self.gridder not in GRIDDERS:
            raise ValueError(f"gridder must be one of {GRIDDERS}, not {self.gridder!r}")
        if self.datacolumn not in DATACOLUMNS:
            raise ValueError(f"datacolumn must be one of {DATACOLUMNS}, not {self.datacolumn!r}")
        if self.weighting not in ("briggs", "natural", "uniform"):
            raise ValueError(f"weighting must be briggs, natural or uniform, not {self.weighting!r}")
        if self.imsize is not None and self.imsize < 16:
            raise ValueError(f"imsize {self.imsize} is too small (>= 16 pixels)")
        if self.cell_arcsec is not None and self.cell_arcsec <= 0:
            raise ValueError("cell_arcsec must be positive")
        if not 0.0 < self.pblimit < 1.0:
            raise ValueError("pblimit must be in (0, 1)")
        if self.niter < 0 or self.fov_deg <= 0 or self.oversample <= 0 or self.beam_nfreq < 1:
            raise ValueError("niter must be >= 0; fov_deg, oversample, beam_nfreq positive")

    def resolved_backend(self) -> str:
        """The backend actually used: 'auto' picks wsclean when it is on PATH."""
        if self.backend != "auto":
            return self.backend
        return "wsclean" if shutil.which("wsclean") else "tclean"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ImagingParams":
        """Build from a dict (e.g. DAG Params); unknown keys are an error,
        None values mean "use the default" unless the field allows None."""
        d = dict(d or {})
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown imaging parameters: {unknown}")
        kw: dict[str, Any] = {}
        for key, value in d.items():
            default = names[key].default
            if value is None and default is not None:
                continue  # None from a form field = keep the default
            if value is not None and isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(value)
            elif value is not None and key in ("imsize", "threads"):
                value = int(value)
            elif value is not None and key in ("cell_arcsec", "threshold_jy"):
                value = float(value)
            kw[key] = value
        return cls(**kw)
