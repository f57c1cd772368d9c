"""Steerflow's HTTP + websocket server, speaking ComfyUI's protocol.

Nothing here imports torch: node packs are loaded lazily by the worker thread
(see :mod:`server.worker`), so the server answers requests while they load.
"""
