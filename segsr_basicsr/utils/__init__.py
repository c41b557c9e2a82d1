"""Reusable helpers: option files, tiling, CLI front, heat maps."""
