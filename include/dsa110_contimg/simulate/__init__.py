"""Simulator: writes subband files exactly as the DSA-110 correlator does,
with a known sky (reference catalogue) and known corruptions (gains)."""
from .corruptions import GainModel
from .session import SessionResult, session_start_around_transit, simulate_group, simulate_session
from .sky import SkyModel, random_strip_sky
from .uvh5_writer import SubbandLayout, write_subband

__all__ = [
    "GainModel",
    "SessionResult",
    "SkyModel",
    "SubbandLayout",
    "random_strip_sky",
    "session_start_around_transit",
    "simulate_group",
    "simulate_session",
    "write_subband",
]
