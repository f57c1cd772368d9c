"""The composition layer: what joins the engine, the node packs and the server.

``engine/`` knows no HTTP and no diffusion, ``nodes/`` knows no HTTP and
``server/`` imports no torch; the command line and the worker process compose
them, so they live here, above all three.
"""

import os as _os


def tune_process() -> None:
    """Settings for a process that runs prompts, set before torch is imported.

    ``THP_MEM_ALLOC_ENABLE``: torch backs CPU allocations over 2 MB with transparent
    huge pages, so filling a model's freshly allocated weights takes one fault per
    2 MB instead of one per 4 KB (a full-size SD 1.5 file loads in 1.25 s instead of
    1.5 s here). A value the user set is kept.
    """
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
