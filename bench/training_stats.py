"""Summarise a training run from its log.jsonl: steps, step time, throughput, loss.

    python bench/training_stats.py runs/mmnist32

Step time is reconstructed from the logged samples/s of each logging window: it excludes time between a
stop and a resume, but includes time the process was paused or starved by other jobs on the machine.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(run_dir: str) -> None:
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    batch = config["train"]["batch_size"]
    seconds, previous = 0.0, 0
    for record in records:
        steps = record["step"] - previous
        seconds += steps * batch / max(record["samples_per_s"], 1e-9)
        previous = record["step"]
    rates = [r["samples_per_s"] for r in records]
    first = [r["loss"] for r in records if r["step"] <= 200]
    last = [r["loss"] for r in records[-20:]]
    print(f"run                {run}")
    print(f"steps              {records[-1]['step']}")
    print(f"batch              {batch}   precision {config['train']['precision']}")
    print(f"step time          {seconds / 3600:.2f} h ({seconds / records[-1]['step']:.2f} s/step on average)")
    print(f"samples/s          median {statistics.median(rates):.2f}, best window {max(rates):.2f}")
    print(f"loss               first 200 steps {statistics.mean(first):.4f}, last {len(last)} windows {statistics.mean(last):.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/mmnist32")
