"""ComfyUI's text-list nodes (``comfy_extras/nodes_dataset.py``): edit captions one by one,
under ComfyUI's ids, inputs and defaults.

Each node takes one text in ``texts`` and gives one text; fed a list (the ``texts`` of
Load Image-Text (from Folder)) it runs once per text and gives a list in the same order,
so captions stay paired with their images. Merge Text Lists takes the whole list.
Every text in or out is at most :data:`nodes.primitives.MAX_STRING_CHARS` characters.
"""

from __future__ import annotations

from engine import ExecutionContext, Input, Node, Output
from nodes.dataset_images import MAX_LIST_ITEMS
from nodes.primitives import MAX_STRING_CHARS, check_text

CATEGORY = "text"


class TextNode(Node):
    """Base of the per-text nodes (not a node)."""

    CATEGORY = CATEGORY
    OUTPUTS = (Output("STRING", "texts", tooltip="Processed texts"),)

    texts: str = Input("", description="Text to process.")

    def text(self) -> str:
        return check_text(self.TYPE, "texts", self.texts)

    def execute(self, ctx: ExecutionContext | None) -> tuple[str]:
        result = self.process(self.text())
        if len(result) > MAX_STRING_CHARS:
            raise ValueError(f"{self.TYPE}: the result would be {len(result)} characters long; "
                             f"the most is {MAX_STRING_CHARS}")
        return (result,)

    def process(self, text: str) -> str:
        raise NotImplementedError


class TextToLowercase(TextNode):
    """The text in lower case (ComfyUI marks it deprecated in favour of Case Converter)."""

    TYPE = "TextToLowercase"
    DISPLAY_NAME = "Convert Text to Lowercase (DEPRECATED)"
    DEPRECATED = True

    def process(self, text: str) -> str:
        return text.lower()


class TextToUppercase(TextNode):
    """The text in upper case (ComfyUI marks it deprecated in favour of Case Converter)."""

    TYPE = "TextToUppercase"
    DISPLAY_NAME = "Convert Text to Uppercase (DEPRECATED)"
    DEPRECATED = True

    def process(self, text: str) -> str:
        return text.upper()


class TruncateText(TextNode):
    """The first ``max_length`` characters of the text (characters, not tokens: CLIP's
    77-token window is shorter than 77 characters only for unusual text)."""

    TYPE = "TruncateText"
    DISPLAY_NAME = "Truncate Text"

    max_length: int = Input(77, min=1, max=10000, description="Maximum text length.")

    def process(self, text: str) -> str:
        return text[:self.max_length]


class AddTextPrefix(TextNode):
    """``prefix`` + the text, e.g. a trigger word before every caption (include the
    separator, such as ``"sks dog, "``). ComfyUI marks it deprecated in favour of
    Concatenate."""

    TYPE = "AddTextPrefix"
    DISPLAY_NAME = "Add Text Prefix (DEPRECATED)"
    DEPRECATED = True

    prefix: str = Input("", description="Prefix to add.")

    def process(self, text: str) -> str:
        return check_text(self.TYPE, "prefix", self.prefix) + text


class AddTextSuffix(TextNode):
    """The text + ``suffix`` (include the separator, such as ``", high quality"``).
    ComfyUI marks it deprecated in favour of Concatenate."""

    TYPE = "AddTextSuffix"
    DISPLAY_NAME = "Add Text Suffix (DEPRECATED)"
    DEPRECATED = True

    suffix: str = Input("", description="Suffix to add.")

    def process(self, text: str) -> str:
        return text + check_text(self.TYPE, "suffix", self.suffix)


class ReplaceText(TextNode):
    """Every occurrence of ``find`` replaced by ``replace`` (plain text, case-sensitive;
    an empty ``find`` puts ``replace`` between every two characters and at both ends,
    as Python does). ComfyUI marks it deprecated in favour of Replace."""

    TYPE = "ReplaceText"
    DISPLAY_NAME = "Replace Text (DEPRECATED)"
    DEPRECATED = True

    find: str = Input("", description="Text to find.")
    replace: str = Input("", description="Text to replace with.")

    def process(self, text: str) -> str:
        find = check_text(self.TYPE, "find", self.find)
        replace = check_text(self.TYPE, "replace", self.replace)
        size = len(text) + text.count(find) * (len(replace) - len(find))
        if size > MAX_STRING_CHARS:  # checked before building it
            raise ValueError(f"{self.TYPE}: the result would be {size} characters long; the "
                             f"most is {MAX_STRING_CHARS}")
        return text.replace(find, replace)


class StripWhitespace(TextNode):
    """The text without leading and trailing whitespace (spaces, tabs, line breaks).
    ComfyUI marks it deprecated in favour of Trim."""

    TYPE = "StripWhitespace"
    DISPLAY_NAME = "Strip Whitespace (DEPRECATED)"
    DEPRECATED = True

    def process(self, text: str) -> str:
        return text.strip()


class MergeTextLists(Node):
    """The texts it is fed, as one list (ComfyUI marks it deprecated in favour of Create
    List)."""

    TYPE = "MergeTextLists"
    DISPLAY_NAME = "Merge Text Lists (DEPRECATED)"
    CATEGORY = CATEGORY
    DEPRECATED = True
    INPUT_IS_LIST = True
    OUTPUTS = (Output("STRING", "texts", is_list=True, tooltip="Processed texts"),)

    texts: str = Input("", description="List of texts to process.")

    def execute(self, ctx: ExecutionContext | None) -> tuple[list[str]]:
        texts = self.texts if isinstance(self.texts, list) else [self.texts]
        if len(texts) > MAX_LIST_ITEMS:
            raise ValueError(f"texts: {len(texts)} texts; the most is {MAX_LIST_ITEMS}")
        return ([check_text(self.TYPE, f"texts[{n}]", t) for n, t in enumerate(texts)],)


NODE_CLASSES = (TextToLowercase, TextToUppercase, TruncateText, AddTextPrefix, AddTextSuffix,
                ReplaceText, StripWhitespace, MergeTextLists)
