#!/usr/bin/env bash
# Create (or reuse) the project virtualenv and install everything into it.
# torch + torchvision go first: their wheels are on local disk here, and qwen-vl-utils and the
# Qwen3-VL video processor need torchvision (DEVELOPERS.md "Install facts").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BARD_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.bard-installed-$(cat pyproject.toml scripts/setup_venv.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's own exit status decides (pipefail); only its noisy local-index warnings are filtered.
pip_q() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
echo "[setup] installing torch 2.14.1 + torchvision 0.29.1 into $VENV (a few minutes on a fresh machine)"
pip_q torch==2.14.1 torchvision==0.29.1
echo "[setup] installing nemo-automodel 0.7.0, qwen-vl-utils, lmms-eval 0.7.3 and this package"
# The eval extra (lmms-eval) is installed so the default test suite runs the real lmms-eval evaluator.
pip_q -e ".[dev,eval]"
"$VENV/bin/python" -c "import torch, torchvision, transformers, nemo_automodel, qwen_vl_utils, nemo_automodel_bard, filelock._api, lmms_eval" \
  || { echo "[setup] import check failed" >&2; exit 1; }
rm -f "$VENV"/.bard-installed-*
touch "$stamp"
echo "[setup] done"
