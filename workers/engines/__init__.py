"""Serving engines: the Engine protocol, the vLLM OpenAI server and llama.cpp's.

Which engine serves a variant on a device is ``scheduler.support.select_engine``.
"""
