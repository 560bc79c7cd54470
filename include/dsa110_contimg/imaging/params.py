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
ACCURACY_FULL_FIELD = 1e-3  # WSClean's w-gridder accuracy with every source in the field (ImagingParams)
ACCURACY_SUBTRACTED = 1e-2  # ... once the bright sources are subtracted before imaging


@dataclass(frozen=True)
class ImagingParams:
    """How to image one MeasurementSet (Stokes I, multi-frequency synthesis).

    Both backends receive the same choices (``backends.ImagerSetup``):
    Hogbom CLEAN (tclean ``deconvolver='hogbom'``; WSClean's default when
    not multiscale), ``niter`` components with loop gain ``gain``, Briggs
    ``robust`` weighting on uv cells of 1/FOV, one MFS image of Stokes I,
    the same cell, size and data column, w-terms corrected (tclean
    ``gridder='wproject'`` with automatic w-planes; WSClean's w-gridder), and
    the same restoring beam (the predicted beam below, since WSClean 3.1's
    own PSF fit is unreliable on DSA-110 PSFs). Major cycles are each
    imager's own (WSClean ``-mgain``; tclean's cycle factor).

    backend: 'auto' (wsclean if on PATH, else tclean), 'tclean' or 'wsclean'.
    imsize: pixels per side; None derives it from ``fov_deg`` and the cell
        (rounded up to an even 2^a 3^b 5^c for the FFT).
    cell_arcsec: None = the cell rule: the minor axis of the restoring beam
        predicted from the MS's uv coverage and this weighting (uv cells of
        1/FOV, Briggs' formula, Gaussian fitted above half power;
        ``psf.predict_beam``) divided by ``pixels_per_beam`` (5), rounded
        down to 0.1 arcsec and never coarser than lambda_min / (2.5 B_max),
        so the longest baseline stays inside the uv grid. Measured on
        simulated MSs (Briggs 0, 3.5 deg; "PSF" = our half-power fit to each
        imager's own PSF): the ``tiny``/``demo`` array (core pads only,
        B_max 437 m): predicted beam 163"x54", cell 10.7", PSF minor axis /
        cell = 5.0 for tclean and WSClean; the full 96-antenna array (B_max
        2.0 km): predicted 38"x31", cell 6.1", ratio 5.0 (tclean) and 5.1
        (WSClean). The former rule, (lambda_min / B_max) / 8, gave about 4.5
        and 12.3 on the same MSs: the beam is no fixed fraction of
        lambda/B_max here (0.55 of it on the core arms, 1.5 once the sparse
        outriggers are down-weighted by Briggs 0), so the full array was
        imaged on 2.5x finer pixels (6x the pixels) than needed.
    threshold_jy: None = automatic, stop at ``auto_threshold_sigma`` x the
        robust (MAD) rms of the residual (tclean ``nsigma``, WSClean
        ``-auto-threshold``); a number = an absolute threshold in Jy.
    pblimit: primary-beam level below which the pb-corrected image is NaN.
    beam_nfreq: frequencies across the band averaged in the drift beam.
    gridder: tclean gridder ('wproject' with ``wprojplanes`` -1 = automatic,
        the like-for-like counterpart of WSClean's w-gridder).
    datacolumn: 'auto' = CORRECTED_DATA when present, else DATA.
    threads: wsclean ``-j`` (None = all cores); tclean runs serially.
    wgridder_accuracy: WSClean's w-gridder accuracy (its ``-wgridder-accuracy``;
        WSClean's own default is 1e-4); None = automatic (``resolved_accuracy``):
        1e-2 when the stage subtracted the reference catalogue's bright
        sources before imaging, else 1e-3. Measured against a direct Fourier
        transform by ``bench/gridding_accuracy.py`` (one subband of a
        full-scale group, dirty image, errors in units of its peak): 1e-3
        differs from 1e-4 by 9e-6 rms, 1e-2 by 1e-4 rms (7e-4 at worst),
        tclean's w-projection by 2.4e-3 rms (7.6e-3 at worst). Next to the
        8 Jy calibrator 1e-2 would put ~0.9 mJy of gridding error above the
        noise, hence 1e-3 for a whole field. Once every catalogue source of
        more than ``subtract_min_apparent_jy`` (5 mJy) apparent is subtracted,
        nothing brighter is left to grid, and 1e-2's error is < 4 uJy, about
        1 % of a group's thermal noise, at 0.6x the imaging time (the
        bench's WSClean: 117 s at 1e-3, 73 s at 1e-2). Either way WSClean
        stays at least 10x more accurate than tclean.
    subtract_bright: before imaging, fit and subtract the reference
        catalogue's bright sources with the drift beam per integration and
        channel, then restore them at their fitted positions and fluxes
        (``subtract.py`` says why: one PSF cannot describe a source drifting
        through the primary beam, and CLEAN turns the mismatch into false
        sources along the array's arms). Needs a reference catalogue;
        without one the image is made without it.
    subtract_min_apparent_jy: sources of at least this mean apparent flux
        are fitted (flux, position; spectral index from 0.1 Jy), subtracted
        and restored. Below it their arm artifacts (~0.7 % of the apparent
        flux) stay far under the thermal noise of a full group (~0.27 mJy).
        5 mJy, not 20: on the imaging proof (full preset) 20 mJy left one
        false detection, a 5-sigma blob 6' from a 1.1 Jy source, and 5 mJy
        none (the bright source's fit is better with its fainter
        neighbours removed first), at 73-80 fitted sources per group
        instead of 37 and ~110 s of subtraction instead of ~90 s.
    subtract_edge_min_apparent_jy: sources outside the image (which CLEAN
        cannot model) are subtracted from this apparent flux, with their
        catalogue flux and position when below the fitting threshold.
    subtract_radius_deg: catalogue sources farther from the phase centre
        are ignored (the Airy sidelobes there are below 0.3 %).
    """

    backend: str = "auto"
    imsize: int | None = None
    cell_arcsec: float | None = None
    fov_deg: float = 3.5
    pixels_per_beam: float = 5.0  # cells across the predicted beam minor axis
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
    wgridder_accuracy: float | None = None
    subtract_bright: bool = True
    subtract_min_apparent_jy: float = 0.005
    subtract_edge_min_apparent_jy: float = 0.002
    subtract_radius_deg: float = 6.0

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
        if self.niter < 0 or self.fov_deg <= 0 or self.pixels_per_beam <= 0 or self.beam_nfreq < 1:
            raise ValueError("niter must be >= 0; fov_deg, pixels_per_beam, beam_nfreq positive")
        if self.wgridder_accuracy is not None and not 0.0 < self.wgridder_accuracy < 0.1:
            raise ValueError("wgridder_accuracy must be in (0, 0.1)")
        if self.subtract_min_apparent_jy <= 0 or self.subtract_edge_min_apparent_jy <= 0 or self.subtract_radius_deg <= 0:
            raise ValueError("subtract_min_apparent_jy, subtract_edge_min_apparent_jy, subtract_radius_deg must be positive")

    def resolved_backend(self) -> str:
        """The backend actually used: 'auto' picks wsclean when it is on PATH."""
        if self.backend != "auto":
            return self.backend
        return "wsclean" if shutil.which("wsclean") else "tclean"

    def resolved_accuracy(self, bright_subtracted: bool) -> float:
        """WSClean's w-gridder accuracy for one image: the one given, else the
        automatic choice (see ``wgridder_accuracy``)."""
        if self.wgridder_accuracy is not None:
            return float(self.wgridder_accuracy)
        return ACCURACY_SUBTRACTED if bright_subtracted else ACCURACY_FULL_FIELD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ImagingParams:
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
            if isinstance(default, bool) and isinstance(value, str):
                value = value.strip().lower() in ("1", "true", "yes", "on")
            elif value is not None and isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(value)
            elif value is not None and key in ("imsize", "threads"):
                value = int(value)
            elif value is not None and key in ("cell_arcsec", "threshold_jy", "wgridder_accuracy"):
                value = float(value)
            kw[key] = value
        return cls(**kw)
