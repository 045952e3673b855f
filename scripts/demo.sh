#!/usr/bin/env bash
# Fresh-machine main job: set up the virtualenv, then run the tiny end-to-end BARD demo on CPU
# (toy task -> AR Qwen3-VL -> convert -> PBM 4->8->16->32 -> SWD -> evaluation).
# Extra arguments go to `bard demo`, e.g. `bash scripts/demo.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
exec .venv/bin/bard demo "$@"
