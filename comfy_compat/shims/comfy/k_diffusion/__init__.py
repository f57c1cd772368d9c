"""ComfyUI's ``comfy.k_diffusion``: only ``utils.FolderOfImages`` (its sampling code is
an internal: ``comfy.k_diffusion.sampling`` fails to import with a message naming it)."""
