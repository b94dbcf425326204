"""Thin drivers: cycling DA experiments, coupled ViT+EnSF runs, scaling studies."""
