"""ComfyUI's dataset folder nodes (``comfy_extras/nodes_dataset.py``): a subfolder of
input/ as an image list (with captions), and an image list (with captions) saved into a
subfolder of output/.

Loading shares Load Image Batch's confinement (:mod:`nodes.image_batch`): the folder and
every file in it must resolve inside input/ (a symlink out is refused, not followed),
at most :data:`nodes.image_batch.MAX_IMAGES` distinct images and
:data:`nodes.image_batch.MAX_TOTAL_PIXELS` pixels load, and the node is cached on the
files' content. Saving writes each file whole under a temporary name first; ``overwrite``
replaces files of the same name (and says how many), ``increment`` never replaces one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from engine import Environment, ExecutionContext, Input, Node, NodeResult, Output
from engine.paths import PathError, writable_folder
from nodes.dataset_images import MAX_LIST_ITEMS, image_items, list_widget
from nodes.image import file_sha256, image_to_pil
from nodes.image_batch import (
    MAX_IMAGES,
    MAX_TOTAL_PIXELS,
    BatchEntry,
    BatchInputError,
    caption_file,
    collect_entries,
    load_fitted,
    read_size,
)
from nodes.limits import name_problem
from nodes.output_files import save_numbered, write_temp_name
from nodes.primitives import MAX_STRING_CHARS, check_text

if TYPE_CHECKING:
    import torch

MAX_FOLDERS = 10_000
"""The most subfolders of input/ the folder list offers."""
MAX_CAPTION_BYTES = 4 * MAX_STRING_CHARS
SAVE_MODES = ("overwrite", "increment")
_REPEATS = re.compile(r"[0-9]+")


def input_subfolders(env: Environment) -> list[str]:
    """Every subfolder of input/, recursively, as '/'-separated relative paths, sorted
    (ComfyUI's ``folder_paths.get_input_subfolders``); hidden folders and symlinks that
    lead out of input/ are left out."""
    try:
        root = env.folder("input")
    except KeyError:
        return []
    if not root.is_dir():
        return []
    real_root = root.resolve()
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root):  # symlinked folders are listed, not walked
        here = Path(dirpath)
        walk = []
        for name in sorted(dirnames):
            path = here / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                target = path.resolve()
                if target != real_root and real_root not in target.parents:
                    continue
            else:
                walk.append(name)
            found.append(path.relative_to(root).as_posix())
        dirnames[:] = walk
        if len(found) >= MAX_FOLDERS:
            break
    return sorted(found[:MAX_FOLDERS])


def repeats_of(name: str) -> int:
    """kohya-ss's repeat count of a subfolder: ``10_cat`` → 10, other names → 1."""
    head = name.split("_")[0]
    return int(head) if _REPEATS.fullmatch(head) else 1


def dataset_entries(env: Environment, folder: str, subfolders: bool) -> list[BatchEntry]:
    """The images of ``folder`` (a subfolder of input/) in name order; with
    ``subfolders``, each subfolder's images in its place too, ``N_name`` ones N times
    (kohya-ss's layout). :class:`BatchInputError` names what is wrong."""
    if not folder.strip():
        raise BatchInputError("folder", "folder is empty: choose a subfolder of input/")
    named = [(e.label.rpartition("/")[2], [e]) for e in collect_entries(env, folder, "")]
    if subfolders:
        directory = env.resolve("input", folder.strip())
        total = len(named)
        for item in sorted(directory.iterdir(), key=lambda p: p.name):
            if item.name.startswith(".") or not item.is_dir():
                continue
            repeat = repeats_of(item.name)
            found = collect_entries(env, f"{folder.strip()}/{item.name}", "")
            total += len(found) * repeat
            if total > MAX_LIST_ITEMS:
                raise BatchInputError("folder", f"folder {folder!r} gives more than "
                                      f"{MAX_LIST_ITEMS} images with its subfolders' "
                                      f"repeats ({item.name!r}: {repeat}x{len(found)})")
            named.append((item.name, found * repeat))
        named.sort(key=lambda pair: pair[0])
    return [entry for _, entries in named for entry in entries]


def entries_problem(entries: list[BatchEntry], folder: str) -> str | None:
    if not entries:
        return (f"folder {folder!r} has no images (.png, .jpg, .jpeg, .webp, ...): put the "
                "dataset's images in it, or choose another subfolder of input/")
    unique = len({e.path for e in entries})
    if unique > MAX_IMAGES:
        return (f"folder {folder!r} has {unique} images; the most that load at once is "
                f"{MAX_IMAGES}: split the dataset into several folders")
    if len(entries) > MAX_LIST_ITEMS:
        return f"folder {folder!r} gives {len(entries)} images; the most is {MAX_LIST_ITEMS}"
    return None


def read_caption(entry: BatchEntry) -> str:
    """The text of the ``.txt`` beside the image (stripped), or "" when there is none."""
    path = caption_file(entry)
    if path is None:
        return ""
    if path.stat().st_size > MAX_CAPTION_BYTES:
        raise ValueError(f"the caption {path.name!r} of {entry.label!r} is over "
                         f"{MAX_CAPTION_BYTES} bytes: a caption is a line or a paragraph")
    return path.read_text(encoding="utf-8", errors="replace").strip()


class LoadImageDataSetFromFolder(Node):
    """Load every image of a subfolder of input/ (.png, .jpg, .jpeg, .webp and the other
    formats Load Image reads; not its subfolders) as an image list, in name order: the
    nodes after it run once per image, so images may differ in size. Put a dataset's
    images in ``input/<name>/`` and pick ``<name>``.

    At most 256 images and 2**25 pixels in all; edited files re-run the node."""

    TYPE = "LoadImageDataSetFromFolder"
    DISPLAY_NAME = "Load Image (from Folder)"
    CATEGORY = "image"
    SUBFOLDERS: ClassVar[bool] = False
    OUTPUTS = (Output("IMAGE", "images", is_list=True, tooltip="List of loaded images"),)

    folder: str = Input(..., choices=input_subfolders,
                        description="The folder to load images from.")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        folder = inputs.get("folder")
        if not isinstance(folder, str):
            return []
        try:
            problem = entries_problem(dataset_entries(env, folder, cls.SUBFOLDERS), folder)
        except BatchInputError as exc:
            return [("folder", str(exc))]
        except OSError as exc:
            return [("folder", f"cannot list folder {folder!r}: {exc}")]
        return [("folder", problem)] if problem else []

    @classmethod
    def fingerprint(cls, inputs: dict[str, Any], env: Environment) -> Any:
        folder = inputs.get("folder")
        if not isinstance(folder, str):
            return None
        try:
            entries = dataset_entries(env, folder, cls.SUBFOLDERS)
        except (ValueError, OSError):
            return None
        digests: dict[Path, str] = {}
        out = []
        for entry in entries:
            if entry.path not in digests:
                caption = caption_file(entry)
                digests[entry.path] = file_sha256(entry.path) + (
                    file_sha256(caption) if caption else "")
            out.append((entry.label, digests[entry.path]))
        return out

    def load(self, ctx: ExecutionContext) -> tuple[list[BatchEntry], list[torch.Tensor]]:
        """The entries and their images (a file repeated is loaded once)."""
        entries = dataset_entries(ctx.env, self.folder, self.SUBFOLDERS)
        problem = entries_problem(entries, self.folder)
        if problem:
            raise ValueError(problem)
        unique = {e.path: e for e in entries}
        sizes = {path: read_size(entry) for path, entry in unique.items()}
        pixels = sum(w * h for w, h in sizes.values())
        if pixels > MAX_TOTAL_PIXELS:
            raise ValueError(f"folder {self.folder!r}: its {len(unique)} images are {pixels} "
                             f"pixels, over the {MAX_TOTAL_PIXELS} that load at once: use "
                             "fewer or smaller images")
        loaded = {}
        for path, entry in unique.items():
            ctx.check_interrupt()
            loaded[path] = load_fitted(entry, sizes[path], "resize")[0].to(ctx.device)
        return entries, [loaded[e.path] for e in entries]

    def execute(self, ctx: ExecutionContext) -> tuple[Any, ...]:
        return (self.load(ctx)[1],)


class LoadImageTextDataSetFromFolder(LoadImageDataSetFromFolder):
    """Load an image-caption dataset from a subfolder of input/: every image as an image
    list and, in the same order, the text of the ``.txt`` file of the same name beside
    each (stripped; "" when there is none) as a text list — e.g. for Make Training
    Dataset, or Add Text Prefix to put a trigger word before every caption.

    kohya-ss's layout works: each subfolder's images join the list in its place, and a
    subfolder named ``N_name`` (``10_cat``) gives them N times. At most 256 distinct
    images, 2**25 pixels in all, 4096 list entries with repeats; edited files re-run the
    node."""

    TYPE = "LoadImageTextDataSetFromFolder"
    DISPLAY_NAME = "Load Image-Text (from Folder)"
    SUBFOLDERS = True
    OUTPUTS = (Output("IMAGE", "images", is_list=True, tooltip="List of loaded images"),
               Output("STRING", "texts", is_list=True, tooltip="List of text captions"))

    folder: str = Input(..., choices=input_subfolders, description="The folder to load "
                        "images and text captions from.")

    def execute(self, ctx: ExecutionContext) -> tuple[Any, ...]:
        entries, images = self.load(ctx)
        captions: dict[Path, str] = {}
        for entry in entries:
            if entry.path not in captions:
                captions[entry.path] = read_caption(entry)
        return images, [captions[e.path] for e in entries]


# --- saving ----------------------------------------------------------------------------------

def folder_problem(name: Any, env: Environment) -> str | None:
    """Why ``folder_name`` cannot name the subfolder of output/ a dataset goes to."""
    if not isinstance(name, str):
        return None
    if not name.strip():
        return "folder_name is empty: name a subfolder of output/, e.g. 'dataset'"
    if problem := name_problem(name, 0):
        return f"folder_name: {problem}"
    try:
        path = env.folder("output", name)
    except PathError as exc:
        return f"folder_name {name!r}: {exc}"
    if path == env.folder("output").resolve():
        return f"folder_name {name!r} is output/ itself: name a subfolder, e.g. 'dataset'"
    return None


def prefix_problem(prefix: Any) -> str | None:
    if not isinstance(prefix, str):
        return None
    if "/" in prefix or "\\" in prefix:
        return (f"filename_prefix {prefix!r} holds a folder separator: it is the start of "
                "each file name; put folders in folder_name")
    if problem := name_problem(prefix, len(".00000_00000.png.12345678.tmp")):
        return f"filename_prefix: {problem}"
    return None


def replace_atomically(path: Path, write: Callable[[Path], None]) -> bool:
    """``write`` a temporary file beside ``path``, then move it onto ``path`` (readers see
    the old file or the whole new one); True when a file was replaced."""
    tmp = path.parent / write_temp_name(path.name)
    try:
        write(tmp)
        existed = path.exists() or path.is_symlink()
        os.replace(tmp, path)  # a symlink of that name is replaced, never followed
        return existed
    finally:
        tmp.unlink(missing_ok=True)


def next_counter(folder: Path, prefix: str) -> int:
    """One past the highest ``<prefix>_NNNNN_NNNNN.png|.txt`` counter in ``folder``."""
    pattern = re.compile(rf"{re.escape(prefix)}_(\d{{5,}})_\d{{5,}}\.(?:png|txt)")
    numbers = (int(m.group(1)) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))
    return 1 + max(numbers, default=0)


def save_pair(folder: Path, prefix: str, idx: int, image: torch.Tensor, caption: str | None,
              number: int | None) -> tuple[Path, int]:
    """Write image ``idx`` (and its caption as a ``.txt`` of the same name): with
    ``number`` None as ComfyUI's ``overwrite`` (``<prefix>_<idx>.png``, replacing), else
    as ``increment`` (``<prefix>_<number>_<idx>.png``, the next free number if taken).
    Returns the image's path and how many files were replaced."""
    pil = image_to_pil(image)[0]

    def write_png(tmp: Path) -> None:
        pil.save(tmp, format="PNG")

    def write_txt(tmp: Path) -> None:
        tmp.write_text(caption or "", encoding="utf-8")

    if number is None:
        path = folder / f"{prefix}_{idx:05d}.png"
        replaced = int(replace_atomically(path, write_png))
        if caption is not None:
            replaced += replace_atomically(path.with_suffix(".txt"), write_txt)
        return path, replaced
    path, after = save_numbered(folder, prefix, f"{idx:05d}.png", write_png, number)
    if caption is not None:
        text_path, _ = save_numbered(folder, prefix, f"{idx:05d}.txt", write_txt, after - 1)
        if text_path.stem != path.stem:
            raise ValueError(f"{path.with_suffix('.txt').name!r} was taken while saving; "
                             f"the caption went to {text_path.name!r}")
    return path, 0


class DatasetSaver(Node):
    """Base of the two save nodes (not a node)."""

    CATEGORY = "image"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    OUTPUTS = ()

    images: Any = Input(type="IMAGE", description="List of images to save.")
    folder_name: str = Input("dataset", description="Name of the folder to save images to "
                             "(inside output directory).")
    filename_prefix: str = Input("image", description="Prefix for saved image filenames.")
    mode: str = Input("overwrite", choices=SAVE_MODES, description="Whether to overwrite "
                      "existing files or increment filenames to avoid overwriting.")

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], env: Environment
                        ) -> list[tuple[str | None, str]]:
        issues: list[tuple[str | None, str]] = []
        if problem := folder_problem(inputs.get("folder_name"), env):
            issues.append(("folder_name", problem))
        if problem := prefix_problem(inputs.get("filename_prefix")):
            issues.append(("filename_prefix", problem))
        return issues

    def save(self, ctx: ExecutionContext, texts: list[str] | None) -> NodeResult:
        cls = type(self)
        name = list_widget(cls, "folder_name", self.folder_name)
        prefix = list_widget(cls, "filename_prefix", self.filename_prefix)
        mode = list_widget(cls, "mode", self.mode)
        if problem := folder_problem(name, ctx.env) or prefix_problem(prefix):
            raise ValueError(problem)
        items = image_items(self.images)
        if not items:
            raise ValueError("images: the list is empty; there is nothing to save")
        if texts is not None and len(texts) != len(items):
            raise ValueError(f"{len(items)} images but {len(texts)} texts: each image needs "
                             "its caption (link the images and texts of one loader, or "
                             "leave texts unlinked to save images only)")
        folder = ctx.env.folder("output", name)
        writable_folder(folder)
        subfolder = folder.relative_to(ctx.env.folder("output").resolve()).as_posix()
        number = next_counter(folder, prefix) if mode == "increment" else None
        files, replaced = [], 0
        for idx, image in enumerate(items):
            ctx.check_interrupt()
            path, count = save_pair(folder, prefix, idx, image,
                                    texts[idx] if texts is not None else None, number)
            replaced += count
            files.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
        what = f"{len(files)} images" + (" and captions" if texts is not None else "")
        note = f"; replaced {replaced} existing files" if replaced else ""
        return NodeResult((), {"images": files, "text": [f"saved {what} to output/"
                                                          f"{subfolder}{note}"]})


class SaveImageDataSetToFolder(DatasetSaver):
    """Save an image list as PNG files in ``output/<folder_name>/``: ``overwrite`` names
    them ``<prefix>_00000.png``, ``_00001`` ... (replacing files of those names, and
    saying how many), ``increment`` ``<prefix>_<run>_00000.png`` with a new run number
    each time (never replacing a file). Batches in the list are saved image by image.
    ComfyUI marks it deprecated: Save Image with a subfolder in its prefix does the
    same."""

    TYPE = "SaveImageDataSetToFolder"
    DISPLAY_NAME = "Save Image (to Folder) (DEPRECATED)"
    DEPRECATED = True

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        return self.save(ctx, None)


class SaveImageTextDataSetToFolder(DatasetSaver):
    """Save an image-caption dataset in ``output/<folder_name>/``: each image as PNG and
    its caption beside it as a ``.txt`` of the same name (the layout Load Image-Text
    (from Folder) and kohya-ss read back). Names as Save Image (to Folder): ``overwrite``
    ``<prefix>_00000.png`` + ``.txt`` (replacing, and saying how many), ``increment``
    ``<prefix>_<run>_00000.png`` (never replacing). ``texts`` must have one text per
    image; unlinked, only the images are saved."""

    TYPE = "SaveImageTextDataSetToFolder"
    DISPLAY_NAME = "Save Image-Text (to Folder)"

    texts: Any = Input(type="STRING", optional=True, force_input=True,
                       description="List of text captions to save.")

    def execute(self, ctx: ExecutionContext) -> NodeResult:
        texts = self.texts if isinstance(self.texts, list) else [self.texts]
        if texts == [None]:  # not linked
            return self.save(ctx, None)
        return self.save(ctx, [check_text(self.TYPE, f"texts[{n}]", t)
                               for n, t in enumerate(texts)])


NODE_CLASSES = (LoadImageDataSetFromFolder, LoadImageTextDataSetFromFolder,
                SaveImageDataSetToFolder, SaveImageTextDataSetToFolder)
