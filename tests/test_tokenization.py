"""CLIP BPE tokenizer against open_clip's tokenizer (the reference ids)."""
from __future__ import annotations

import open_clip
import pytest
import torch

from modules.tokenization import tokenize

EDGE_CASES = [
    "a man is driving a red car down the road",
    "Hello  World!!   multiple   spaces\tand\nnewlines",
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;apos&#39;",
    "😀🐶 emoji and café naïve façade",
    "日本語のテキスト и кириллица ελληνικά",
    "it's they're we've I'm you'll he'd",
    "numbers 1234 3.14 and version2.0",
    "mojibake: cafÃ© â€œquotesâ€\x9d",
    "<|endoftext|> literal special tokens <|startoftext|>",
    "",
    "word " * 80,
]


@pytest.mark.parametrize("max_words", [32, 64, 77])
def test_matches_reference_ids(max_words):
    ours = tokenize(EDGE_CASES, max_words=max_words)
    reference = open_clip.tokenize(EDGE_CASES, context_length=max_words)
    assert ours.dtype == torch.long and ours.shape == (len(EDGE_CASES), max_words)
    assert torch.equal(ours, reference)


def test_layout_sot_eot_padding():
    ids = tokenize(["a dog", "word " * 80], max_words=16)
    assert ids[:, 0].tolist() == [49406, 49406]
    assert ids[0, 3].item() == 49407 and ids[0, 4:].eq(0).all()
    assert ids[1, -1].item() == 49407 and ids[1].ne(0).all()  # truncated: EOT kept last


def test_single_string_and_invalid_length():
    assert tokenize("a dog").shape == (1, 32)
    with pytest.raises(ValueError, match="max_words"):
        tokenize(["a"], max_words=1)
