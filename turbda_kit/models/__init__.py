"""Forecast models: step functions over ensemble-batched tensors (SQG, Lorenz-96)."""
