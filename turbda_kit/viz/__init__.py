"""Holoviews plot builders: xarray in, a plot out."""
