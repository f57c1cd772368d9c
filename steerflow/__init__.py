"""The composition layer: what joins the engine, the node packs and the server.

``engine/`` knows no HTTP and no diffusion, ``nodes/`` knows no HTTP and
``server/`` imports no torch; the command line and the worker process compose
them, so they live here, above all three.
"""
