"""Steerflow's HTTP + websocket server, speaking ComfyUI's protocol.

Nothing here imports torch: the server validates and queues prompts, and a
worker process runs them (see :mod:`server.runtime` and :mod:`server.worker`).
"""
