"""Waitsy: a dependency gate that waits until Batchy workflows succeeded today. Stdlib only."""
from .cli import main

__all__ = ["main"]
