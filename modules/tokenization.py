"""CLIP's byte-level BPE tokenizer.

Text is repaired with ftfy, html-unescaped, whitespace-collapsed and lower-cased, split by
CLIP's regular expression, mapped byte-wise to printable unicode and merged with the
49,152-line merge list shipped beside this file (`bpe_simple_vocab_16e6.txt.gz`, OpenAI's
file, MIT licence: see `BPE_VOCAB_LICENSE.txt`).
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # vocabulary = 256 bytes x2 (plain, end-of-word) + merges + 2 specials

_SPLIT_PATTERN = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)


def _byte_alphabet() -> dict[int, str]:
    """Map every byte to a printable unicode character (printable Latin-1 bytes map to themselves).

    BPE then works on strings without whitespace/control characters, which the merge file
    could not represent.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def clean_text(text: str) -> str:
    """ftfy repair, double html unescape, whitespace collapse, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class BPETokenizer:
    """Encode text into CLIP token ids.

    `encode` adds no special tokens, and a literal "<|endoftext|>" in a caption is encoded as
    ordinary text (as open_clip does), so captions cannot inject control tokens.
    """

    def __init__(self, vocab_file: Path = VOCAB_FILE) -> None:
        if not Path(vocab_file).is_file():
            raise FileNotFoundError(f"BPE vocabulary not found at {vocab_file}; it ships with the repo "
                                    f"in modules/ (restore it with git checkout)")
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        self.byte_encoder = _byte_alphabet()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.merge_rank = {pair: i for i, pair in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self._cache: dict[str, list[str]] = {}

    def _bpe(self, word: str) -> list[str]:
        """Merge the characters of one pre-token (already byte-mapped) into vocabulary symbols."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            ranked = [(self.merge_rank.get(pair, float("inf")), i)
                      for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, best = min(ranked)
            if rank == float("inf"):
                break
            first, second = parts[best], parts[best + 1]
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _SPLIT_PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(mapped))
        return ids


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> BPETokenizer:
    """The process-wide tokenizer (the merge file is read once per process)."""
    return BPETokenizer()


def tokenize(texts: list[str] | str, max_words: int = 32) -> torch.Tensor:
    """Token ids `[N, max_words]` (long): SOT, the caption's tokens, EOT, zero padding.

    Captions longer than `max_words` are truncated and EOT is kept as the last token, so
    the EOT-pooled text feature always exists.
    """
    if isinstance(texts, str):
        texts = [texts]
    if max_words < 2:
        raise ValueError(f"max_words must be >= 2 to hold SOT and EOT, got {max_words}")
    tokenizer = get_tokenizer()
    out = torch.zeros(len(texts), max_words, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_id] + tokenizer.encode(text)[:max_words - 2] + [tokenizer.eot_id]
        out[row, :len(ids)] = torch.tensor(ids)
    return out
