"""Data-assimilation filters (EnSF, LETKF): pure analysis functions + config dataclasses."""
