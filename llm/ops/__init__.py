"""Numerical building blocks below the model: attention backends and their masks."""
