#!/usr/bin/env bash
# Set up .venv if needed (fast when already done), then run the test suite; arguments go to pytest,
# e.g. `bash scripts/test.sh tests/core/test_config.py -k override`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# ROS 2 nodes under test talk only to this machine, never to other hosts on the network.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec .venv/bin/python -m pytest -q "$@"
