"""Derive the CLIP BPE tokenizer files used by Stable Diffusion 1.x.

Reads ``bpe_simple_vocab_16e6.txt.gz`` (shipped in the open-clip-torch wheel) and
writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
``special_tokens_map.json`` so ``transformers.CLIPTokenizer.from_pretrained(dir)``
works offline. The vocabulary is built exactly the way CLIP builds it: the 256
byte symbols, the same symbols with ``</w>``, every merged pair in rank order,
then the two special tokens (49408 entries in all).

Usage: python scripts/derive_clip_tokenizer.py [--gz PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "nodes" / "assets" / "clip_tokenizer"
GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges so the vocabulary totals 49408.
NUM_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77


def byte_symbols() -> dict[int, str]:
    """Map each byte to a printable unicode character (GPT-2/CLIP byte-level scheme).

    Printable Latin-1 bytes map to themselves; the rest are shifted past 255 so
    the BPE never sees whitespace or control characters.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    # Insertion order matters: CLIP's vocabulary lists the printable bytes first.
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    for n, b in enumerate(others):
        mapping[b] = chr(256 + n)
    return mapping


def find_bpe_gz() -> Path:
    """Locate the vocab file inside the installed open_clip package without importing it.

    Importing open_clip pulls in torchvision, which this project does not install.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; pass --gz PATH")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GZ_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GZ_NAME} not found in the open_clip package; pass --gz PATH")


def read_merges(gz_path: Path) -> list[tuple[str, str]]:
    """Return CLIP's merge list: lines 1..NUM_MERGES (line 0 is a version header)."""
    with gzip.open(gz_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    bad = [m for m in merges if len(m) != 2]
    if bad or len(merges) != NUM_MERGES:
        raise ValueError(f"bad BPE file {gz_path}: {len(merges)} merges, malformed {bad[:3]}")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Build the token -> id table in CLIP's order."""
    symbols = list(byte_symbols().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} unique tokens, got {len(vocab)}")
    return vocab


def tokenizer_config(pad_token: str = EOS) -> dict[str, object]:
    """The ``tokenizer_config.json`` content (SD 1.x pads with the EOS token, SD 2.x with "!")."""
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
    }


def special_tokens_map(pad_token: str = EOS) -> dict[str, str]:
    return {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def derive(gz_path: Path, out_dir: Path) -> None:
    merges = read_merges(gz_path)
    vocab = build_vocab(merges)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Compact, key order = id order: keeps the file small and diffs stable.
    (out_dir / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    write_json(out_dir / "tokenizer_config.json", tokenizer_config())
    write_json(out_dir / "special_tokens_map.json", special_tokens_map())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gz", type=Path, help=f"path to {GZ_NAME} (default: from open_clip)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    gz_path = args.gz or find_bpe_gz()
    derive(gz_path, args.out)
    print(f"wrote CLIP tokenizer ({VOCAB_SIZE} tokens) from {gz_path} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
