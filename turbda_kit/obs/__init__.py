"""Observation operators, observation networks and noise processes."""
