"""Shared helpers of the reliability tests (test_reliability.py, test_signals.py).

Runs the CLI in-process, builds the tiny 8-frame checkpoint those tests sample from, writes small
deterministic training configs, and starts `python -m vdgen` subprocesses whose stderr can be waited on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from vdgen import config as cfg
from vdgen.checkpoint import build_network, save_model
from vdgen.config import DiffusionConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "data" / "bad"
# The model the CLI tests sample from: an 8-frame window at 16x16, a few thousand parameters.
MODEL8 = ModelConfig(frames=8, height=16, width=16, base_width=16, multipliers=(1, 2), attention_resolutions=(8,), heads=2)
TMP_MARK = ".tmp"  # every temporary file of vdgen.atomic.atomic_path has it in its name


def make_checkpoint(path: Path, model: ModelConfig = MODEL8, seed: int = 0) -> Path:
    """Write a randomly initialised model checkpoint (the vdgen safetensors format) to `path`."""
    torch.manual_seed(seed)
    save_model(path, build_network(model).state_dict(), model, DiffusionConfig(), {"made_by": "tests/helpers_train.py"})
    return path


def run_cli(argv: list, capsys) -> tuple[int, str]:
    """Run `vdgen ARGV` in-process; return (exit code, stderr). Any non-SystemExit exception propagates."""
    from vdgen.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    return code, capsys.readouterr().err


def clean_error(stderr: str) -> str | None:
    """The message if stderr is one 'error: ...' line and no traceback (besides 'note:' and 'seed ...' info lines)."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(("note: ", "seed "))]
    if "Traceback" in stderr or len(lines) != 1 or not lines[0].startswith("error: "):
        return None
    return lines[0][len("error: "):]


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if TMP_MARK in p.name)


# ----------------------------------------------------------------------------------- training runs


def train_config(steps: int = 12, **train_changes) -> cfg.RunConfig:
    """The tiny preset (Moving MNIST 16x16) on one thread, `steps` steps, a checkpoint after every step."""
    tiny = cfg.preset("tiny")
    changes = {"steps": steps, "checkpoint_minutes": 1e-6, "threads": 1, "log_every": 1, **train_changes}
    return dataclasses.replace(tiny, train=cfg.merge(tiny.train, **changes))


def write_config(path: Path, config: cfg.RunConfig) -> Path:
    path.write_text(json.dumps(cfg.to_dict(config), indent=2))
    return path


def state_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------------- subprocesses


RESTORE_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('vdgen', run_name='__main__', alter_sys=True)"
)


class Cli:
    """`python -m vdgen ARGS` in a subprocess; its stderr is read line by line on a thread."""

    def __init__(self, args: list, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("VDGEN_DEBUG", None)
        env.pop("VDGEN_PROGRESS", None)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        command = [sys.executable, "-m", "vdgen"]
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored.
            command = [sys.executable, "-c", RESTORE_SIGINT]
        self.process = subprocess.Popen(
            [*command, *map(str, args)], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match:
        """Block until a stderr line matches `pattern` (re.search); fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"exited ({self.process.wait()}) before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        """Wait for exit; return (exit code, all of stderr)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("still running after the signal:\n" + "\n".join(self.lines)) from None
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code, "\n".join(self.lines)

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def corpus_outcomes() -> dict[str, str]:
    """Corpus file name -> what read_video must give ('frames' or 'error'), from tests/data/bad/README.md."""
    outcomes = {}
    for line in (BAD / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[2] in ("frames", "error"):
            outcomes[cells[0]] = cells[2]
    return outcomes
