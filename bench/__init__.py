"""Batchy's benchmark harness: `python -m bench.run` measures Batchy against the floor of its own stack.

run (the table), drive and load (the load generators), plans (what each connection sends),
procs (workflows and processes), baseline (the floor: Flask + gunicorn + one HGETALL).
One-off investigation tools live in bench.tools.
"""
