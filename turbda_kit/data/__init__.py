"""Nature runs, preprocessing into training shards, datasets (xarray in, xarray out)."""
