"""batchy.testing, the harness every service test and benchmark starts its processes with."""
from __future__ import annotations

import os
import subprocess
import sys


def test_a_service_process_leaves_no_log_folder_behind(tmp_path):
    """Its log stays readable after stop() and is removed when the process that made it exits."""
    script = ("from batchy.testing import ServiceProcess\n"
              "svc = ServiceProcess('redis://127.0.0.1:1/0', '.')\n"
              "open(svc.log_path, 'w').write('written')\n"
              "print(svc.log_path)\n"
              "assert svc.log() == 'written'\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True)
    log_path = out.stdout.strip()
    assert os.path.basename(os.path.dirname(log_path)).startswith("batchy-svc-"), log_path
    assert not os.path.exists(os.path.dirname(log_path)), "the log folder outlived the process"
