"""How many of ComfyUI's example PNGs (github.com/comfyanonymous/ComfyUI_examples)
convert and validate on Steerflow. A test aid: nothing here is shipped or committed.

    git clone --depth 1 https://github.com/comfyanonymous/ComfyUI_examples /tmp/ex
    .venv/bin/python scripts/check_comfy_examples.py /tmp/ex [--all]

Each PNG's ``workflow`` text chunk (ComfyUI's UI format) goes through the one converter
(:func:`engine.workflow.from_object`, with the built-in nodes' schemas), then validation
against a scratch folder. Model files and input pictures are not there, so a name outside
its list (``not_in_choices`` on a ``*_name`` input or LoadImage's ``image``) counts as
``valid_but_files``; every other issue is printed.
By default only SD 1.x pictures are checked: those whose checkpoints' names say SD 1.x
(``v1-5``, ``sd15``, ...) or name no other family.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

OTHER_FAMILY = re.compile(r"xl|sd3|flux|cascade|turbo|svd|video|cosmos|hunyuan|ltx|mochi|"
                          r"wan|lumina|hidream|qwen|chroma|aura|omnigen|sd_xl|v2-|sd21|768|"
                          r"stable_audio|zero123|z_image|edit", re.IGNORECASE)


def png_text(path: Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return {k: v for k, v in (getattr(im, "text", None) or {}).items()
                if isinstance(v, str)}


def model_names(ui: dict[str, Any]) -> list[str]:
    names = []
    for node in ui.get("nodes", []):
        for value in node.get("widgets_values") or []:
            if isinstance(value, str) and value.endswith((".safetensors", ".ckpt", ".pt",
                                                         ".pth", ".bin")):
                names.append(value)
    return names


def is_sd1(path: Path, ui: dict[str, Any]) -> bool:
    return not OTHER_FAMILY.search(path.name) and not any(
        OTHER_FAMILY.search(n) for n in model_names(ui))


def check(path: Path, ui: dict[str, Any], registry: Any, env: Any) -> tuple[str, list[str]]:
    from engine.validation import PromptValidationError, validate_prompt
    from engine.workflow import from_object

    try:
        prompt, _ = from_object(ui, registry)
    except Exception as exc:
        return "convert_error", [f"{type(exc).__name__}: {exc}"]
    try:
        validate_prompt(prompt, registry, env)
        return "valid", []
    except PromptValidationError as exc:
        issues = [i for i in exc.issues if not _missing_file(i)]
        if not issues:
            return "valid_but_files", []
        return "invalid", [f"{i.kind} {i.class_type}.{i.input_name or ''}: {i.message[:160]}"
                           for i in issues[:6]]


def _missing_file(issue: Any) -> bool:
    """A model or input picture that is not in the scratch folders: not a format problem."""
    name = issue.input_name or ""
    return issue.kind == "not_in_choices" and (
        name.endswith("_name") or (name == "image" and "input/" in issue.message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--all", action="store_true", help="every family, not SD 1.x only")
    args = parser.parse_args(argv)

    from engine.environment import Environment
    from engine.registry import default_registry

    registry = default_registry()
    env = Environment.create(tempfile.mkdtemp(prefix="sf-examples-"), device="cpu")
    counts: collections.Counter[str] = collections.Counter()
    for path in sorted(args.folder.rglob("*.png")):
        try:
            text = png_text(path)
        except OSError:
            counts["unreadable"] += 1
            continue
        if "workflow" not in text:
            counts["no_workflow"] += 1
            continue
        try:
            ui = json.loads(text["workflow"])
        except ValueError:
            counts["bad_json"] += 1
            continue
        if not args.all and not is_sd1(path, ui):
            counts["other_family"] += 1
            continue
        status, problems = check(path, ui, registry, env)
        counts[status] += 1
        print(f"{status:17s} {path.relative_to(args.folder)}")
        for problem in problems:
            print(f"    {problem}")
    print(json.dumps(dict(counts), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
