#!/usr/bin/env bash
# Print the path of a llama-cpp-python wheel (the `llamacpp` extra's engine), built once.
#
# It ships only as source and compiles llama.cpp: minutes on two cores. We build it once
# with `pip wheel` (using VENV's pip) into
# ~/.cache/cunliang/wheels/llama-cpp-python-<version>-<hash of the build settings>/ and
# install.sh installs that file afterwards (seconds). Progress goes to stderr. The build is portable, not tuned to this CPU:
# GGML_NATIVE=OFF with an AVX2/FMA/F16C baseline, so a wheel built on an AVX-512 machine
# runs on an AVX2-only one (and CI's different CPU can build or reuse it). It builds only
# what the Python package loads: no tests, examples, tools, server binary, multimodal
# (mtmd) library or OpenSSL, and not llama.cpp's `common` library, which the package's
# ctypes bindings never load but its CMakeLists forces on (a project include turns it
# back off: ~45% of the compile).
set -euo pipefail
VENV=${1:-.venv}  # whose pip builds the wheel
VERSION=0.3.36
HERE=$(cd "$(dirname "$0")" && pwd)
CMAKE_ARGS_PORTABLE=(
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
  -DGGML_AVX512=OFF -DGGML_CCACHE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
  "-DCMAKE_PROJECT_llama.cpp_INCLUDE=$HERE/llamacpp-no-common.cmake"
)
KEY=$( { echo "$VERSION"; printf '%s\n' "${CMAKE_ARGS_PORTABLE[@]//$HERE/}"; cat "$HERE/llamacpp-no-common.cmake"; } \
  | sha256sum | cut -c1-12)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cunliang/wheels/llama-cpp-python-$VERSION-$KEY"
WHEEL=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)

if [ -z "$WHEEL" ]; then
  command -v g++ >/dev/null 2>&1 || {
    echo "llamacpp-wheel: installing g++ to compile llama.cpp" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends g++ >/dev/null
  }
  echo "llamacpp-wheel: building llama-cpp-python $VERSION (portable CPU build, a few minutes; cached in $CACHE)" >&2
  started=$(date +%s)
  mkdir -p "$(dirname "$CACHE")"
  tmp=$(mktemp -d "${CACHE}.XXXX.tmp")
  trap 'rm -rf "$tmp"' EXIT
  if ! CMAKE_ARGS="${CMAKE_ARGS_PORTABLE[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$VENV/bin/python" -m pip wheel -q --no-deps "llama-cpp-python==$VERSION" -w "$tmp" >"$tmp/build.log" 2>&1; then
    tail -40 "$tmp/build.log" >&2
    echo "llamacpp-wheel: building llama-cpp-python failed (log above)" >&2
    exit 1
  fi
  rm -f "$tmp/build.log"
  rm -rf "$CACHE" && mv "$tmp" "$CACHE"  # complete or absent, never half-written
  trap - EXIT
  echo "llamacpp-wheel: built in $(( $(date +%s) - started )) s" >&2
  WHEEL=$(ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
echo "$WHEEL"
