"""Summarise a training run from its log.jsonl: steps, step time, throughput, loss.

    python bench/training_stats.py runs/mmnist32 [--since STEP] [--until STEP]

--since / --until summarise only the logging windows after STEP / up to STEP (one session's share
of a long run, or the stretch trained on one machine or in one precision).

Step time is reconstructed from the logged samples/s of each logging window: it excludes time between a
stop and a resume, but includes time the process was paused or starved by other jobs on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main(run_dir: str, since: int = 0, until: int | None = None) -> None:
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    batch = config["train"]["batch_size"]
    earlier = [r["step"] for r in records if r["step"] <= since]
    records = [r for r in records if r["step"] > since and (until is None or r["step"] <= until)]
    if not records:
        sys.exit(f"no logged steps in ({since}, {until}]")
    # A log that starts mid-run (a branch keeps only its own steps) starts one window before its first line.
    previous = max(earlier) if earlier else max(since, records[0]["step"] - config["train"]["log_every"])
    start, seconds = previous, 0.0
    for record in records:
        steps = record["step"] - previous
        seconds += steps * batch / max(record["samples_per_s"], 1e-9)
        previous = record["step"]
    rates = [r["samples_per_s"] for r in records]
    first = [r["loss"] for r in records if r["step"] <= start + 200]
    last = [r["loss"] for r in records[-20:]]
    print(f"run                {run}")
    print(f"steps              {records[-1]['step']}" + (f" ({records[-1]['step'] - start} after step {start})" if start else ""))
    print(f"batch              {batch}   precision {config['train']['precision']}")
    print(f"step time          {seconds / 3600:.2f} h ({seconds / (records[-1]['step'] - start):.2f} s/step on average)")
    print(f"samples/s          median {statistics.median(rates):.2f}, best window {max(rates):.2f}")
    print(f"loss               first 200 steps{' after ' + str(start) if start else ''} {statistics.mean(first):.4f}, last {len(last)} windows {statistics.mean(last):.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/mmnist32")
    parser.add_argument("--since", type=int, default=0, help="only logging windows after this step")
    parser.add_argument("--until", type=int, default=None, help="only logging windows up to this step")
    args = parser.parse_args()
    main(args.run_dir, args.since, args.until)
