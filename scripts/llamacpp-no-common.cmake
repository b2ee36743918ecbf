# Included right after llama.cpp's project() (CMAKE_PROJECT_llama.cpp_INCLUDE) when
# scripts/llamacpp-wheel.sh builds llama-cpp-python: its CMakeLists forces llama.cpp's
# `common` library on, but the Python package's ctypes bindings load only libllama and
# libggml*, so the largest part of the compile would be thrown away.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common utils (unused by llama-cpp-python)" FORCE)
