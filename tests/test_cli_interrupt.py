"""Ctrl-C in ``steerflow run``: the first one stops the prompt as the server's /interrupt
does (a training keeps a checkpoint at the step it reached, and the same command resumes
after it), a second one quits at once."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from steerflow.cli import _CtrlC

REPO = Path(__file__).resolve().parents[1]


class FakeExecutor:
    """Nothing running at the first call (the prompt not started yet), then one is."""

    def __init__(self) -> None:
        self.calls = 0
        self.hit = threading.Event()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        self.calls += 1
        if self.calls >= 2:
            self.hit.set()
            return True
        return False


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="no signal.raise_signal")
def test_first_ctrl_c_interrupts_the_prompt_second_quits(capsys):
    before = signal.getsignal(signal.SIGINT)
    executor = FakeExecutor()
    with pytest.raises(KeyboardInterrupt), _CtrlC(executor):
        signal.raise_signal(signal.SIGINT)
        assert executor.hit.wait(5), "the first Ctrl-C did not reach the executor"
        assert executor.calls == 2  # retried until a prompt was running
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)  # the handler raises at once; never reached
    assert signal.getsignal(signal.SIGINT) is before
    assert "interrupting… (Ctrl-C again to quit at once)" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="no signal.raise_signal")
def test_a_node_that_does_not_stop_is_said_to_need_a_second_ctrl_c(capsys, monkeypatch):
    """The packs drill: a custom node that never checks for interrupts ran on for 25 s
    after the first Ctrl-C with nothing said (the server would restart its worker)."""
    monkeypatch.setattr(_CtrlC, "HINT_AFTER", 0.2)
    executor = FakeExecutor()
    with _CtrlC(executor):
        signal.raise_signal(signal.SIGINT)
        assert executor.hit.wait(5)
        time.sleep(1.0)  # the "node" does not stop
    assert "has not stopped: it may not check for interrupts" in capsys.readouterr().err


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGINT)
    seen: list[object] = []

    def run() -> None:
        with _CtrlC(FakeExecutor()) as ctrl_c:
            seen.append(ctrl_c.previous)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [None] and signal.getsignal(signal.SIGINT) is before


STEPS = 100_000  # never finishes: each run is stopped by Ctrl-C


def training_workflow(home: Path) -> Path:
    (home / "input").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(color, (6 + 4 * i, 6, 22 + 4 * i, 22))
        img.save(home / "input" / f"shape{i}.png")
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "steerflow-tiny"}},
        "batch": {"class_type": "LoadImageBatch",
                  "inputs": {"folder": "", "images": "shape0.png\nshape1.png"}},
        "train": {"class_type": "TrainLoRA", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
            "images": ["batch", 0], "captions": "a sks shape", "rank": 2, "alpha": 2.0,
            "learning_rate": 1e-3, "steps": STEPS, "batch_size": 1, "seed": 3,
            "resolution": 32, "target": "unet", "target_modules": "to_k, to_v",
            "gradient_checkpointing": False, "save_name": ""}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["train", 2]}},
    }
    path = home / "train.json"
    path.write_text(json.dumps(prompt))
    return path


def run_until(cmd: list[str], home: Path, at_step: int) -> tuple[int, str, list[int]]:
    """Run ``cmd``, send SIGINT once its training bar shows ``at_step`` or more, and read
    it to its end: (exit code, stderr, every step the bar showed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=home)
    assert proc.stderr is not None
    err, steps, sent = b"", [], False
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stderr], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            err += chunk
            steps = [int(n) for n in re.findall(rb"node train:[^\r\n]*?\| *(\d+)/%d" % STEPS,
                                                err)]
            if not sent and steps and steps[-1] >= at_step:
                proc.send_signal(signal.SIGINT)
                sent = True
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, err.decode(errors="replace")[-2000:]
    return code, err.decode(errors="replace"), [s for s in steps if s > 0]


def checkpoint_step(home: Path) -> int:
    (path,) = (home / "temp" / "training").glob("lora-*.pt")
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_keeps_the_exact_step_and_the_same_command_resumes(tmp_path, models_dir):
    """Ctrl-C ended the run as a KeyboardInterrupt, past the training's interrupt handler:
    only the periodic checkpoint (every 50 steps, 500 for a big DreamBooth) was left."""
    cmd = [sys.executable, "-m", "steerflow.cli", "run", str(training_workflow(tmp_path)),
           "--base-dir", str(tmp_path), "--models-dir", str(models_dir), "--device", "cpu"]
    code, err, steps = run_until(cmd, tmp_path, at_step=3)
    assert code == 1, err[-2000:]
    assert "interrupting… (Ctrl-C again to quit at once)" in err
    assert err.rstrip().endswith("interrupted") and "Traceback" not in err, err[-2000:]
    stopped = checkpoint_step(tmp_path)
    assert stopped == steps[-1]  # the step it reached, not the last periodic one
    code, err, steps = run_until(cmd, tmp_path, at_step=1)
    assert code == 1, err[-2000:]
    assert steps[0] == stopped + 1  # resumed after the step Ctrl-C stopped at
    assert checkpoint_step(tmp_path) == steps[-1]
