#!/usr/bin/env bash
set -euo pipefail; cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/robostack train cf2-hover "$@"
echo "quickstart: run folder $(ls -td "$PWD"/runs/cf2-hover/*/ 2>/dev/null | head -n 1) (config.yaml, checkpoints/, metrics.csv, plot training_curves.png)"
