"""unCLIP (SD 2.1 unCLIP): image-variation conditioning from CLIP image embeddings.
(Being written.)"""

from __future__ import annotations

NODE_CLASSES: tuple = ()
