#!/usr/bin/env bash
# README command 1: set up, build the demo model repository, predict with each model, then
# serve them on 127.0.0.1:8000 (Ctrl-C stops).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh sklearn,torch,batch
echo "(the modelport command is in .venv: 'source .venv/bin/activate' to use it yourself)"
exec .venv/bin/modelport demo demo-models --serve "$@"
