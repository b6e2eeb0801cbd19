"""PaliGemma's vocabulary layout: the ids and pieces every part of the course agrees on.

    id 0 <pad>   1 <eos>   2 <bos>   3 <unk>   then "\\n" and the word pieces,
    then <loc0000> ... <loc1023>, then <seg000> ... <seg127>

The tokenizer is trained with these ids (`solutions.tokenizer`), the
preprocessing writes them (`solutions.preprocess`), the decoder stops and pads
with them (`solutions.evaluate`). A tokenizer with another layout would train
and caption without an error, only wrongly, so `check_layout` refuses it.
This module imports nothing of the course's: everything can build on it.
"""

from __future__ import annotations

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SEPARATOR = "\n"  # ends the prefix; the suffix starts after it
LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(1024))  # detection: image coordinates
SEG_TOKENS = tuple(f"<seg{i:03d}>" for i in range(128))  # segmentation codewords


def check_layout(tokenizer, name: str = "tokenizer") -> None:
    """Raises ValueError unless pad/eos/bos have PaliGemma's ids and "\\n" is one piece.

    Args:
      tokenizer: a `sentencepiece.SentencePieceProcessor` (or anything with its
        `pad_id`, `eos_id`, `bos_id` and `encode`).
      name: what the message calls it: a file, or the function that was given it.
    """
    ids = (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.bos_id())
    if ids != (PAD_ID, EOS_ID, BOS_ID):
        raise ValueError(
            f"{name}: the tokenizer has pad/eos/bos ids {ids}, PaliGemma needs "
            f"{(PAD_ID, EOS_ID, BOS_ID)}; train or load one with that layout"
        )
    if len(tokenizer.encode(SEPARATOR)) != 1:
        raise ValueError(
            f"{name}: '\\n' must be a single piece of the tokenizer (it ends the prefix)"
        )
