"""Sources: finding (PyBDSF), Condon (1997) errors, cross-matching with QA,
forced photometry and variability. The cross-match stage
(:mod:`dsa110_contimg.crossmatch`) strings these together."""
