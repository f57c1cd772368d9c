"""What the canvas drill (canvas4) needed from the server: whether prompts run in turns,
and ComfyUI's display names as search aliases in /object_info."""

from __future__ import annotations

from collections.abc import Callable

from engine.registry import NodeRegistry
from tests.server.helpers import Http, LiveServer


def builtin_nodes() -> NodeRegistry:
    """A few built-in nodes, without the built-in pack's model set-up."""
    from nodes.conditioning import CLIPTextEncode
    from nodes.image import SaveImage
    from nodes.sag import SelfAttentionGuidance
    from nodes.sampling import KSampler
    from nodes.sampling_advanced import KSamplerAdvanced

    registry = NodeRegistry()
    for cls in (CLIPTextEncode, KSampler, KSamplerAdvanced, SaveImage, SelfAttentionGuidance):
        registry.register(cls)
    return registry


def test_system_stats_says_whether_the_queue_runs_in_turns(
        make_server: Callable[..., LiveServer], loop) -> None:
    """The Queue tab said prompts of several clients run "in turns" on a server that ran
    them by number: it can now ask."""
    for fair in (False, True):
        http = Http(make_server(fair_queue=fair).url, loop)
        assert http.get("/system_stats").json()["system"]["fair_queue"] is fair
        http.close()


def test_object_info_lists_comfyuis_display_name_as_a_search_alias(
        make_server: Callable[..., LiveServer], loop) -> None:
    """"CLIP Text Encode (Prompt)" found nothing in the palette: Steerflow shows the node as
    Encode Prompt."""
    http = Http(make_server(registry_factory=f"{__name__}:builtin_nodes").url, loop)
    info = http.get("/object_info/CLIPTextEncode").json()["CLIPTextEncode"]
    assert info["display_name"] == "Encode Prompt"
    assert info["search_aliases"] == ["CLIP Text Encode (Prompt)"]
    every = http.get("/object_info").json()
    assert every["KSamplerAdvanced"]["search_aliases"] == ["KSampler (Advanced)"]
    # ComfyUI shows it by its type id: that name too (the palette ranks names ahead of ids)
    assert every["KSampler"]["search_aliases"] == ["KSampler"]
    assert "search_aliases" not in every["SaveImage"]  # same name in ComfyUI: no alias
    assert "SAG" in every["SelfAttentionGuidance"]["search_aliases"]  # ours are kept
    http.close()
