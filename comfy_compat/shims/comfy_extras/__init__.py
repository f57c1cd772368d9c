"""ComfyUI's ``comfy_extras`` node modules, as far as packs call them outside a model:
``nodes_latent`` (``LatentBatch``), ``nodes_mask`` (``composite``) and
``nodes_clip_sdxl`` / ``nodes_upscale_model`` (their node classes, run as Steerflow's
built-in nodes of the same name; see :mod:`comfy_compat.builtin_nodes`). Other
``comfy_extras`` modules fail to import with a message naming them."""
