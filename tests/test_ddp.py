"""Distributed data-parallel training: 2 CPU processes with the gloo backend, started as torchrun starts them.

A small entry script (written below, test-only) wraps vdgen.train.train: it records the batch
indices each rank draws and every call of the loop's file writers, then writes one JSON report
per rank (outside the run folder) with a hash of its final weights. Before training it checks
that gloo can start at all, so a sandbox without local TCP makes the test skip, not fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vdgen.checkpoint import load_model

TIMEOUT_S = 120

ENTRY = r'''
import dataclasses, hashlib, json, os, sys
from pathlib import Path

import torch
import torch.distributed as dist

import vdgen.train as vt
from vdgen.config import preset

run_dir, report_dir = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])

# Can gloo start here? (no local TCP in some sandboxes)
# (on a port of its own: rebinding MASTER_PORT right after this group's store closed could stall)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['PROBE_PORT']}", rank=rank, world_size=2)
probe = torch.ones(1)
dist.all_reduce(probe)
dist.destroy_process_group()
(report_dir / f"gloo_ok_{rank}").write_text(str(float(probe)))

batches, writes = [], []
real_make_batch = vt.make_batch
def spy_make_batch(dataset, indices, image_frames=0):
    batches.append(list(indices))
    return real_make_batch(dataset, indices, image_frames)
vt.make_batch = spy_make_batch
for name in ("write_text_atomic", "save_state", "export_release", "_append_log", "_write_loss_plot", "_write_samples"):
    def wrapped(*args, _real=getattr(vt, name), _name=name, **kwargs):
        writes.append(_name)
        return _real(*args, **kwargs)
    setattr(vt, name, wrapped)

def digest(module):
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode()); h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()

config = preset("tiny")
config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=3))
initial = digest(vt.new_state(config, torch.device("cpu")).net)
state = vt.train(run_dir, config)
(report_dir / f"rank{rank}.json").write_text(json.dumps({
    "net": digest(state.net), "ema": digest(state.ema), "initial": initial, "batches": batches,
    "writes": writes, "losses": state.losses, "step": state.step,
}))
'''


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_ranks_stay_in_sync_and_only_rank_0_writes(tmp_path):
    entry, run_dir, reports = tmp_path / "entry.py", tmp_path / "run", tmp_path / "reports"
    entry.write_text(ENTRY)
    reports.mkdir()
    # What torchrun does for --nproc_per_node 2, done by hand so that every worker can be killed on a
    # hang (torchrun puts each worker in a session of its own) and gloo is pinned to loopback.
    port, probe_port = _free_port(), _free_port()
    while probe_port == port:
        probe_port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = {
            **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PROBE_PORT": str(probe_port),
            "GLOO_SOCKET_IFNAME": "lo",
        }
        log = open(tmp_path / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, "-u", str(entry), str(run_dir), str(reports)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        if len(list(reports.glob("gloo_ok_*"))) < 2:
            pytest.skip(f"gloo did not start within {TIMEOUT_S} s here (no usable loopback TCP?)")
        raise AssertionError(f"DDP training did not finish in {TIMEOUT_S} s: {_read(logs)[-2000:]}") from None
    returncode = max(proc.returncode for proc in procs)
    done = subprocess.CompletedProcess(procs, returncode, _read(logs), "")
    output = (done.stdout or "") + (done.stderr or "")
    if len(list(reports.glob("gloo_ok_*"))) < 2:
        pytest.skip("torch.distributed cannot start gloo in this sandbox: " + " | ".join(output.strip().splitlines()[-3:]))
    assert done.returncode == 0, output[-4000:]

    rank0, rank1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1))
    # Same weights on both ranks after training, and training did move them.
    assert rank0["step"] == rank1["step"] == 3
    assert rank0["net"] == rank1["net"] != rank0["initial"]
    assert rank0["ema"] == rank1["ema"]
    # Rank 0's export holds the EMA weights every rank agrees on.
    assert digest(load_model(run_dir / "model.safetensors").net) == rank1["ema"]
    # Each rank drew its own slice of the data stream: (step * world + rank) * batch.
    assert rank0["batches"] == [[0, 1], [4, 5], [8, 9]]
    assert rank1["batches"] == [[2, 3], [6, 7], [10, 11]]
    # Logged losses are the mean over ranks, so both ranks hold the same curve.
    assert rank0["losses"] == rank1["losses"]
    # Only rank 0 touched the run folder.
    assert rank1["writes"] == []
    assert {"write_text_atomic", "save_state", "export_release", "_append_log", "_write_loss_plot"} <= set(rank0["writes"])
    assert [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read(logs: list) -> str:
    text = ""
    for log in logs:
        log.flush()
        log.seek(0)
        text += log.read()
        log.close()
    return text
