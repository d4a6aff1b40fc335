"""The benchmark harness and its tools still run end to end (tiny mode) and print their tables; no timing checks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed"),
]

ROWS = (
    "baseline (1 HGETALL)", "get_status", "open_batch json", "open_batch infa", "close_batch", "close_batch job=",
    "re-open (batch still open)", "open_batch re-open", "open_batch, window policy", "close_batch, window policy",
    "spread over 64 workflows", "all on one workflow",
    "Redis per API call", "1 steps", "10 steps", "history snapshot of a 3-step workflow", "GET /history/<wf>",
    "start until /healthz answers", "targets",
)


def bench(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <module>` from the repo root, as the docs tell a reader to."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180,
                          env=env, cwd=ROOT)


def test_harness_prints_every_row(tmp_path):
    engine = "wrk" if shutil.which("wrk") else "python"
    out = tmp_path / "report.json"
    proc = bench("bench.run", "--smoke", "--json", str(out), env={**os.environ, "BENCH_ENGINE": engine})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout
    for row in ROWS:
        assert row in table, f"missing {row!r} in:\n{table}"
    reopen = next(line for line in table.splitlines() if line.startswith("  re-open (batch still open)"))
    assert float(reopen.split()[5]) > 0, reopen  # calls/s, then its ratio to the baseline
    policy = next(line for line in table.splitlines() if line.startswith("  open_batch, window policy"))
    assert float(policy.split()[4]) > 0, policy
    assert f"load from {engine}" in table
    assert table.count("met ") + table.count("MISSED") >= 11
    assert out.exists() and out.stat().st_size > 0


def test_python_load_generator_drives_a_server():
    from bench import load

    result = load.ceiling(0.5, connections=4)
    assert result["rps"] > 0


def test_instruction_counter_drives_every_scenario():
    # --cpu: the same in-process driver without valgrind (the counts take minutes).
    proc = bench("bench.tools.instructions", "--cpu", "--many", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = ("baseline (1 HGETALL)", "get_status", "open_batch json + close_batch", "open_batch infa + close_batch",
              "open_batch + close_batch job=, 32 steps")
    for label in labels:
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"  {label}  "))
        per_call = float(row[len(label) + 2:].split()[0].replace(",", ""))
        assert per_call > 0, row


def test_instruction_counter_measures_another_checkout_and_profiles(tmp_path):
    # --root: batchy imported from another checkout (here a copy of this one), named on stderr;
    # --only: those rows and the baseline; --cprofile: one scenario's functions.
    other = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "batchy"), other / "batchy", ignore=shutil.ignore_patterns("__pycache__"))
    proc = bench("bench.tools.instructions", "--cpu", "--many", "3", "--root", str(other), "--only", "reopen")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"batchy from {other}" in proc.stderr
    rows = [line.split("  ")[1] for line in proc.stdout.splitlines() if line.startswith("  ") and "(" in line[:40]]
    assert any(r.startswith("baseline") for r in rows) and any(r.startswith("open_batch re-open") for r in rows)
    assert not any(r.startswith("get_status") for r in rows), proc.stdout
    proc = bench("bench.tools.instructions", "--cprofile", "json", "--many", "5", "--top", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "commit.py" in proc.stdout and "function calls" in proc.stdout
    # --opcodes: bytecodes per iteration, in all and per function (batchy's own among them).
    proc = bench("bench.tools.instructions", "--opcodes", "json", "--many", "3", "--top", "400")
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = float(proc.stdout.split(" bytecodes per iteration")[0].replace(",", ""))
    rows = [line.split(None, 1) for line in proc.stdout.splitlines()[1:]]
    assert total > 1000 and any(where.startswith("batchy/storage/commit.py:") for _, where in rows), proc.stdout
    assert sum(float(count.replace(",", "")) for count, _ in rows) <= total + 1


@pytest.mark.skipif(not shutil.which("valgrind"), reason="valgrind is not installed")
def test_instruction_counter_counts_the_served_worker():
    # --served: `batchy serve --workers 1` and the baseline under callgrind, called over a
    # socket; one row per scenario with the worker's instructions per call (gunicorn included).
    proc = bench("bench.tools.instructions", "--served", "--many", "4", "--only", "get")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {}
    for label in ("baseline (1 HGETALL)", "get_status"):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"  {label}  "))
        rows[label] = float(row[len(label) + 2:].split()[0].replace(",", ""))
    # A served call runs the WSGI app and gunicorn's worker: far more than nothing, less than 100 M.
    assert all(100_000 < n < 100_000_000 for n in rows.values()), proc.stdout
    assert "open_batch" not in proc.stdout  # --only


def test_fleet_scenario_prints_every_page():
    from bench import fleet

    proc = bench("bench.fleet", "--smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label, _path in (*fleet.PAGES, fleet.WORKFLOW_DETAIL):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"  {label}  "))
        assert row.count(" s, ") == 2, row  # one figure per fleet size
    assert "/metrics series" in proc.stdout


def test_capacity_scenario_measures_single_redis_and_the_cluster():
    proc = bench("bench.capacity", "--smoke")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("bytes/workflow", "bytes/history entry", "redis cpu us/commit", "bytes/backfill chunk"):
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"  {label}  "))
        figures = [float(x.replace(",", "")) for x in row[len(label) + 2:].split()]
        assert len(figures) == 2, row  # single redis-server, then the cluster
        if label in ("bytes/workflow", "redis cpu us/commit"):  # the others are too small to beat noise here
            assert min(figures) > 0, row


def test_harness_measures_another_checkout_in_the_same_rounds(tmp_path):
    # --against: a second `batchy serve` from another checkout (here a copy of this one that
    # leaves a mark when imported) runs each of Batchy's loads in the same rounds; its rows follow.
    other = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "batchy"), other / "batchy", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "batchy" / "__init__.py", "a") as fh:
        fh.write("\nopen(__file__ + '.imported', 'w').close()  # test_bench_smoke: this copy was imported\n")
    out = tmp_path / "report.json"
    proc = bench("bench.run", "--smoke", "--against", str(other), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (other / "batchy" / "__init__.py.imported").exists()
    lines = proc.stdout.splitlines()
    for label in ("get_status", "open_batch json", "close_batch", "open_batch infa", "re-open (batch still open)",
                  "open_batch, window policy", "close_batch, window policy"):
        row = next(line for line in lines if line.startswith(f"  {label} (other)  "))
        assert float(row[len(label) + 10:].split()[1]) > 0, row  # its ratio to the same rounds' baseline
    assert f"(other) = the Batchy of {other}" in proc.stdout
    assert "open/close json spread (other)" in proc.stdout  # and its own load run's CPU figures
    # the one-workflow loads have their twins too, so both checkouts' services hold the same state
    assert any(line.startswith("  open/close one wf (other)  ") for line in lines), proc.stdout
    row = next(line for line in lines if line.startswith("  close_batch job= (other)  "))
    assert float(row[len("close_batch job=") + 10:].split()[1]) > 0, row
    # and each pair's head-to-head ratio, round by round: this checkout's rate over the other's
    versus = {v["label"] + ("" if v["section"].startswith("spread") else " (one wf)"): v
              for v in json.loads(out.read_text())["versus"]}
    assert set(versus) >= {"open_batch json", "re-open (batch still open)", "close_batch job= (one wf)"}, versus
    assert all(len(v["rounds"]) == 1 and v["median"] > 0 for v in versus.values()), versus
    head = lines.index(next(line for line in lines if line.startswith("this checkout / the other, same round")))
    assert lines[head + 2].split()[0] == "open_batch" and float(lines[head + 2].split()[2]) > 0, lines[head:head + 3]


def test_pair_measures_two_checkouts_round_by_round(tmp_path):
    # bench.tools.pair: this checkout's service and another's (a copy that leaves a mark when
    # imported), each on its own redis-server, one row each per scenario.
    other = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "batchy"), other / "batchy", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "batchy" / "__init__.py", "a") as fh:
        fh.write("\nopen(__file__ + '.imported', 'w').close()  # test_bench_smoke: this copy was imported\n")
    proc = bench("bench.tools.pair", "--against", str(other), "--rounds", "2", "--duration", "0.5", "--warmup", "0",
                 "--only", "json", "reopen")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (other / "batchy" / "__init__.py.imported").exists()
    assert "round 2 of 2 done" in proc.stderr
    lines = proc.stdout.splitlines()
    for label in ("open_batch json + close_batch", "open_batch re-open (batch open)"):
        for side in ("this", "other"):
            row = next(line for line in lines if line.startswith(f"  {label} ({side})"))
            best_cpu, median_cpu, _best_redis, _median_redis, best_rate, median_rate = map(float, row.split()[-6:])
            assert 0 < best_cpu <= median_cpu and best_rate >= median_rate > 0, row


@pytest.mark.skipif(not shutil.which("perf"), reason="perf is not installed (apt-get install linux-perf)")
def test_pair_splits_the_workers_samples_with_perf():
    proc = bench("bench.tools.pair", "--against", ROOT, "--rounds", "1", "--duration", "1", "--warmup", "0",
                 "--only", "json", "--perf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("  open_batch json + close_batch (this)"))
    shares = dict(part.rsplit(" ", 1) for part in row.split("perf: ")[1].split(", "))
    assert set(shares) == {"python", "kernel", "libc", "other"}, row
    assert 98 <= sum(int(share.rstrip("%")) for share in shares.values()) <= 102, row  # rounded shares of every sample
    assert int(shares["python"].rstrip("%")) > 0, row
