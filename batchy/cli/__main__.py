"""`python -m batchy.cli`: the `batchy` command (batchy/testing.py starts the service so)."""
import sys

from batchy.cli import main

sys.exit(main())
