"""Investigation tools beside the harness, each run as `python -m bench.tools.<name>` from the repo root.

profile (py-spy per scenario), instructions (instructions per call under valgrind),
waitsy_bench (Waitsy's reaction and /wait under waiters).
"""
