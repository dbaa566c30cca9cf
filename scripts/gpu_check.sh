#!/usr/bin/env bash
# The MuJoCo Warp backend's figures on one NVIDIA GPU (issue 20): `bench sim` for go2-walk at 4096 and 16384
# envs, then `bench train` for cf2-hover and go2-walk trained on the warp backend, each JSON line with the GPU's
# name. Run from a clone on a machine with an NVIDIA GPU and a CUDA build of torch in the Python that runs
# robostack (scripts/setup.sh installs the CPU wheel: there, `pip install torch` from the CUDA index first):
#
#   bash scripts/gpu_check.sh              # figures go to gpu_check/ (one JSON file each) and stdout
#
# Environment: ROBOSTACK (the command, default .venv/bin/robostack, else robostack on PATH), OUT (default
# gpu_check), DEVICE (default cuda; cpu runs the same steps on Warp's CPU device, with SIM_ENVS and the
# *_OVERRIDES made small, to check the script itself), SIM_ENVS (default "4096 16384"), SIM_SECONDS (default 20),
# CF2_OVERRIDES and GO2_OVERRIDES (recipe overrides of the GPU runs; the defaults below are first guesses:
# more envs per iteration, fewer iterations than the CPU recipes), EPISODES (randomized evaluation episodes,
# default 1000; the evaluation runs on the C backend, so it is also a sim-to-sim check).
# Targets (one H100): go2-walk no fall >= 0.95 and velocity error <= 0.15 m/s in <= 5 minutes at >= 250k env
# steps/s; cf2-hover success >= 0.95 in <= 10 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${ROBOSTACK:-}" ]; then
  if [ -x .venv/bin/robostack ]; then ROBOSTACK=.venv/bin/robostack; else ROBOSTACK=robostack; fi
fi
OUT="${OUT:-gpu_check}"
DEVICE="${DEVICE:-cuda}"
SIM_ENVS="${SIM_ENVS:-4096 16384}"
SIM_SECONDS="${SIM_SECONDS:-20}"
EPISODES="${EPISODES:-1000}"
CF2_OVERRIDES="${CF2_OVERRIDES:-num_envs=4096 max_iterations=40}"
GO2_OVERRIDES="${GO2_OVERRIDES:-num_envs=4096 max_iterations=300}"
mkdir -p "$OUT"

PYTHON="$(dirname "$(command -v "$ROBOSTACK")")/python"
[ -x "$PYTHON" ] || PYTHON=python3
CARD="$("$PYTHON" - "$DEVICE" <<'PY'
import sys, torch
device = sys.argv[1]
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"gpu_check.sh: torch {torch.__version__} sees no CUDA GPU: install a CUDA build of torch "
                 "(or run with DEVICE=cpu to check this script on Warp's CPU device)")
    print(torch.cuda.get_device_name(torch.device(device)))
else:
    print("cpu")
PY
)"
echo "gpu_check.sh: device $DEVICE ($CARD), results in $OUT/" >&2

with_card() {  # add the card to a JSON object on stdin
  "$PYTHON" -c 'import json, sys; r = json.loads(sys.stdin.read().strip().splitlines()[-1]); r["device_name"] = sys.argv[1]; print(json.dumps(r))' "$CARD"
}

for n in $SIM_ENVS; do
  "$ROBOSTACK" bench sim --task go2-walk --backend warp --device "$DEVICE" --num-envs "$n" --seconds "$SIM_SECONDS" \
    --json | with_card | tee "$OUT/bench_sim_go2-walk_$n.json"
done
# shellcheck disable=SC2086  # the overrides are words
"$ROBOSTACK" bench train cf2-hover --backend warp --device "$DEVICE" --episodes "$EPISODES" --json \
  $CF2_OVERRIDES | with_card | tee "$OUT/bench_train_cf2-hover.json"
# shellcheck disable=SC2086
"$ROBOSTACK" bench train go2-walk --backend warp --device "$DEVICE" --episodes "$EPISODES" --json \
  $GO2_OVERRIDES | with_card | tee "$OUT/bench_train_go2-walk.json"
