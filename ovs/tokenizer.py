"""The CLIP tokenizer, equal to open_clip's ``SimpleTokenizer`` (open_clip 3.3.0, clean="lower").

    >>> from ovs.tokenizer import tokenize
    >>> tokenize(["a photo of a cat.", "a photo of a dog."]).shape
    (2, 77)

Text goes through open_clip's cleaning -- ``ftfy.fix_text``, ``html.unescape`` twice, whitespace
folding, ``lower()`` -- and then through the C tokenizer (csrc/text/bpe.c), which splits it with
open_clip's pre-tokenisation pattern and applies byte-level BPE with the merges file shipped in
``ovs/data``. Each row of :func:`tokenize` is ``<start_of_text>``, the ids, ``<end_of_text>``,
zeros; a text longer than ``context_length - 2`` ids is cut and still ends with
``<end_of_text>``, as in open_clip.

The text fixing is ``ftfy.fix_text`` with its default settings, called exactly as open_clip
calls it (ftfy is a dependency of ovs, as it is of open_clip), so ids stay equal to open_clip's
for the ftfy version installed.
"""
from __future__ import annotations

import gzip
import html
import operator
import os
import threading
from typing import Sequence

import ftfy
import numpy as np

from . import _core

__all__ = ["Tokenizer", "tokenize", "clean_text", "default_tokenizer", "DEFAULT_CONTEXT_LENGTH"]

DEFAULT_CONTEXT_LENGTH = 77
DEFAULT_MERGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                              "bpe_simple_vocab_16e6.txt.gz")


def clean_text(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy.fix_text, HTML-unescape twice, fold whitespace, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


# =============================================================================================
# The tokenizer
# =============================================================================================

class Tokenizer:
    """CLIP's byte-level BPE tokenizer (49408 tokens with the default merges file).

    ``merges_path``: a CLIP merges file, gzip-compressed if it ends in ".gz"; default the
    ``bpe_simple_vocab_16e6.txt.gz`` shipped with ovs. The instance is thread-safe.
    """

    def __init__(self, merges_path: str | os.PathLike | None = None,
                 context_length: int = DEFAULT_CONTEXT_LENGTH):
        path = os.fspath(merges_path) if merges_path is not None else DEFAULT_MERGES
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            merges = f.read()
        self._bpe = _core.bpe_create(merges)
        self.vocab_size, self.sot_token_id, self.eot_token_id = _core.bpe_info(self._bpe)
        self.context_length = _check_context(context_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text after cleaning, without <start_of_text>/<end_of_text>."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        return _core.bpe_encode(self._bpe, clean_text(text))

    def decode(self, ids) -> str:
        """Text of token ids, as open_clip decodes it (a space after each word, specials kept)."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"ids must be a 1-D integer array, got {ids.ndim}-D {ids.dtype}")
            ids = ids.tolist()
        data = _core.bpe_token_bytes(self._bpe, ids)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids of each text: int32 array (N, context_length), see :func:`tokenize`."""
        texts = _check_texts(texts)
        context = self.context_length if context_length is None else _check_context(context_length)
        return _core.bpe_tokenize(self._bpe, [clean_text(t) for t in texts], context)


def _check_texts(texts) -> list[str] | tuple[str, ...]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a str or a list/tuple of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return texts


def _check_context(context_length) -> int:
    if isinstance(context_length, bool):
        raise TypeError("context_length must be an int, got bool")
    try:
        n = operator.index(context_length)
    except TypeError:
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}") from None
    if n < 2:
        raise ValueError(f"context_length must be >= 2 (room for <start_of_text> and "
                         f"<end_of_text>), got {n}")
    return n


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> Tokenizer:
    """The shared tokenizer with the default merges file, loaded on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tokenizer()
    return _default


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """open_clip.tokenize without torch: int32 array (N, context_length).

    ``texts``: one str (N = 1) or a list/tuple of str; an empty list gives a (0, context_length)
    array. Row i is <start_of_text> (49406), the ids of texts[i], <end_of_text> (49407), zeros;
    texts longer than context_length - 2 ids are cut, keeping <end_of_text> last.
    """
    texts = _check_texts(texts)
    context = _check_context(context_length)
    return default_tokenizer()(texts, context)
