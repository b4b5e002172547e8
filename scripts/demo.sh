#!/usr/bin/env bash
# README command 1: set up, build the demo model repository, run a prediction on each model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sklearn,torch
.venv/bin/modelport demo demo-models "$@"
echo "(the modelport command is in .venv: run 'source .venv/bin/activate' first)"
