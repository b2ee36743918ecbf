"""Serving engines: the Engine protocol, the vLLM OpenAI server, and the engine choice rules."""
