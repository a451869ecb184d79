#!/usr/bin/env bash
# Ready the checkout for a device-tool call that trains on a lent GPU, and take the result back.
#
# The device tool sends tracked files plus carried paths, 64 MiB in all; the tracked weights are
# 120 MB. `prep` untracks them in the index only (the files stay on disk; `restore` tracks them
# again: commit nothing in between) and copies the run into .device/run, the path to carry.
#
#   bash scripts/device_prep.sh prep [RUN]             # RUN defaults to runs/mmnist32 (stop its training first)
#   device run: carry [".device"], command "bash scripts/device_train.sh 480", timeout_s 600
#   bash scripts/device_prep.sh restore FILES_AT SHA256 [RUN]   # join the pieces into RUN, check, re-track
set -euo pipefail
cd "$(dirname "$0")/.."
big=(weights/i3d-kinetics-400.safetensors weights/vdgen-mmnist32.safetensors weights/mmnist32-run/state.safetensors)
exclude=.git/info/exclude
marker="# device_prep.sh"

case "${1:-}" in
prep)
    run=${2:-runs/mmnist32}
    [ -f "$run/state.safetensors" ] || { echo "no $run/state.safetensors"; exit 1; }
    if pgrep -f "vdgen train $run" >/dev/null; then echo "training on $run is running: stop it first (kill -INT)"; exit 1; fi
    rm -rf .device && mkdir -p .device/run
    cp "$run/config.json" "$run/log.jsonl" "$run/state.safetensors" .device/run/
    git rm -q --cached "${big[@]}"
    { echo "$marker"; printf '/%s\n' "${big[@]}"; echo /.device/; } >>"$exclude"
    echo "would travel: $(( ( $(git ls-files -z | xargs -0 cat | wc -c) + $(du -sb .device | cut -f1) ) / 1048576 )) MiB (limit 64)"
    ;;
restore)
    files=${2:?FILES_AT}; sha=${3:?SHA256}; run=${4:-runs/mmnist32}
    cat "$files"/state.part-* >"$run/state.safetensors.tmp"
    got=$(sha256sum "$run/state.safetensors.tmp" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
        rm -f "$run/state.safetensors.tmp"
        echo "the joined state's sha256 is $got, not $sha: $run left as it was"; exit 1
    fi
    mv "$run/state.safetensors.tmp" "$run/state.safetensors"
    cp "$files/log.jsonl" "$files/loss.png" "$run/"
    mkdir -p "$run/samples" && cp "$files"/step_*.png "$run/samples/" 2>/dev/null || true
    git reset -q -- "${big[@]}"
    sed -i "/^$marker\$/,/^\/.device\/\$/d" "$exclude"
    rm -rf .device
    git status --short
    ;;
*)
    echo "usage: device_prep.sh prep [RUN] | restore FILES_AT SHA256 [RUN]"; exit 2 ;;
esac
