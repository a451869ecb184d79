#!/usr/bin/env bash
# Resume the main training run on a lent GPU machine for a fixed time, then send the run back.
#
# Runs ON the device machine (its python3 has torch, typer, rich, einops, safetensors, numpy; PyAV
# is not needed to train on Moving MNIST). The run folder travels as the carried path .device/run
# (scripts/device_prep.sh makes it and keeps the 120 MB of tracked weights from travelling).
#
#   bash scripts/device_train.sh SECONDS [TRAIN OPTIONS]   # SECONDS of training, then SIGINT: the run saves its state
#
# Writes to $OUT (at most 8 files of 16 MiB come back): the state in 15 MB pieces
# (state.part-aa ...), log.jsonl, loss.png and the newest contact sheet. Prints the state's
# sha256 so that `scripts/device_prep.sh restore` can check the pieces it joins.
# DEVICE=cpu runs the same on the CPU (a dry run of the packaging).
set -uo pipefail
seconds=${1:?usage: device_train.sh SECONDS}
run=.device/run
out=${OUT:?set OUT to the output folder (the device tool sets it)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}

python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
[ -f "$run/state.safetensors" ] || { echo "no $run/state.safetensors: run scripts/device_prep.sh here first"; exit 1; }
start=$(tail -n 1 "$run/log.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["step"])')

# SIGINT stops the loop between steps and writes the state atomically; exit 130 is expected.
timeout -s INT -k 60 "$seconds" python3 -m vdgen train "$run" --resume --device "$device" --threads 4 "${@:2}"
echo "train exited with $?"

python3 bench/training_stats.py "$run" --since "$start"
sha256sum "$run/state.safetensors"
split -b 15000000 "$run/state.safetensors" "$out/state.part-"
cp "$run/log.jsonl" "$run/loss.png" "$out/"
newest=$(ls "$run"/samples/step_*.png 2>/dev/null | sort | tail -1)
[ -n "$newest" ] && cp "$newest" "$out/"
ls -l "$out"
