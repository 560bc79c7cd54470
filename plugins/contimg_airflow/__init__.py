"""Airflow adapters for the DSA-110 continuum imaging pipeline.

Thin: each adapter unpacks its inputs, calls the library (`dsa110_contimg`)
and returns the library's small result for XCom."""
