"""A stand-in worker for tests/server/test_worker_output.py: it starts a helper process that
shares its output pipes (as a node starting a tool would), says the helper's pid, and
waits to be killed."""

from __future__ import annotations

import subprocess
import sys
import time

if __name__ == "__main__":
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print(f"helper {helper.pid}", flush=True)
    time.sleep(300)
