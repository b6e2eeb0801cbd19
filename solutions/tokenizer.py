"""A SentencePiece tokenizer with PaliGemma's id layout, trained on our own text.

PaliGemma's tokenizer (Gemma's 256,000 word pieces plus 1,024 `<locDDDD>` and
128 `<segDDD>` tokens) cannot be downloaded here, so the course trains a small
one with the same layout:

    id 0 <pad>   1 <eos>   2 <bos>   3 <unk>   4 "\\n"   5 ... word pieces
    then <loc0000> ... <loc1023>, then <seg000> ... <seg127>

(the ids and pieces are `solutions.vocabulary`'s).

"\\n" is one piece because it separates the prefix from the suffix. As in
Gemma's tokenizer there is no normalisation and no dummy "▁" before the text,
so `encode(prefix) + encode("\\n")` equals `encode(prefix + "\\n")`.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Iterable

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from solutions.files import write_atomic
from solutions.vocabulary import (
    BOS_ID,
    EOS_ID,
    LOC_TOKENS,
    PAD_ID,
    SEG_TOKENS,
    SEPARATOR,
    UNK_ID,
    check_layout,
)


def train_tokenizer(
    sentences: Iterable[str],
    path: str | os.PathLike,
    *,
    num_word_pieces: int = 512,
    with_loc_seg: bool = True,
) -> sentencepiece.SentencePieceProcessor:
    """Trains a BPE SentencePiece model with PaliGemma's id layout.

    Args:
      sentences: the training text (captions, prompts).
      path: where to write the `.model` file (atomically).
      num_word_pieces: the most pieces before the loc/seg tokens, special
        tokens and "\\n" included (fewer when the text needs fewer).
      with_loc_seg: append PaliGemma's 1,024 loc and 128 seg tokens.
    Returns:
      The loaded tokenizer: its word pieces, then the 1,152 loc/seg tokens.
    """
    path = pathlib.Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "spm")
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=prefix,
            vocab_size=num_word_pieces,
            model_type="bpe",
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            user_defined_symbols=[SEPARATOR],
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            byte_fallback=False,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(pathlib.Path(prefix + ".model").read_bytes())
    if with_loc_seg:
        # Appended after the word pieces, as in PaliGemma; user-defined pieces
        # are never split, so "<loc0012>" encodes to exactly one id.
        for piece in (*LOC_TOKENS, *SEG_TOKENS):
            proto.pieces.add(piece=piece, score=0.0, type=proto.SentencePiece.USER_DEFINED)
    write_atomic(path, proto.SerializeToString())
    return load_tokenizer(path)


def load_tokenizer(path: str | os.PathLike) -> sentencepiece.SentencePieceProcessor:
    """Loads a `.model` file and checks it has PaliGemma's special ids."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer there. The real one is paligemma_tokenizer.model from "
            "big_vision's bucket; the course's own is written by its pretraining script."
        )
    try:
        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except RuntimeError as err:  # sentencepiece's word for a file it cannot parse
        raise ValueError(
            f"{path} is not a SentencePiece model ({err}); it is damaged or another file: "
            "copy or download it again."
        ) from None
    check_layout(tokenizer, str(path))
    return tokenizer
