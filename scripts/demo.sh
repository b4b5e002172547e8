#!/usr/bin/env bash
# README command 1: set up, build the demo model repository, run a prediction on each model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sklearn,torch
exec .venv/bin/modelport demo demo-models "$@"
