"""ComfyUI's ``comfy_execution`` package, as far as packs use it: ``graph_utils``
and ``graph`` (node expansion and blockers, over the engine's own API)."""
