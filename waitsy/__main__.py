"""Run waitsy: python -m waitsy -wf wf1."""
import sys

from .cli import main

sys.exit(main())
