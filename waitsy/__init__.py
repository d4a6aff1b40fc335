"""Waitsy: a dependency gate that waits until Batchy workflows succeeded today, or cover a range. Stdlib only."""
from .cli import main

__all__ = ["main"]
