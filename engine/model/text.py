"""Text to token ids by big_vision's recipe: `lower | tok(length=64, model="gemma", bos="no", eos="sticky")`.

Built from the raw `tokenizers` model so that neither the tokenizer's padding side, its attention-mask
default, its BOS template nor a Unicode lowercasing normaliser can change the ids.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TEXT_LENGTH = 64
PAD_ID = 0
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def lowercase_ascii(text: str) -> str:
    """TensorFlow's `tf.strings.lower` default: ASCII letters only ("ÉCOLE" -> "École")."""
    return text.translate(_ASCII_LOWER)


def has_unlowered_letters(text: str) -> bool:
    """True when ASCII-only lowercasing leaves uppercase letters (non-Latin or accented capitals)."""
    return any(ch != ch.lower() for ch in lowercase_ascii(text))


@dataclass
class TokenizedTexts:
    input_ids: np.ndarray  # (n, 64) int64, right-padded with 0, EOS last real token
    num_tokens: list[int]  # tokens before truncation, EOS included
    truncated: list[bool]
    warnings: list[str] = field(default_factory=list)


def _strip_lowercase(normalizer: dict | None) -> dict | None:
    """Remove Lowercase steps from a serialised normaliser (we lowercase ourselves, the reference way)."""
    if normalizer is None:
        return None
    if normalizer.get("type") == "Lowercase":
        return None
    if normalizer.get("type") == "Sequence":
        steps = [s for s in (_strip_lowercase(n) for n in normalizer["normalizers"]) if s is not None]
        return {"type": "Sequence", "normalizers": steps} if steps else None
    return normalizer


class TextTokenizer:
    """Reference-recipe tokenizer over a checkpoint's tokenizer.json."""

    def __init__(self, tokenizer_json: str, eos_token: str = "<eos>", lowercase: str = "ascii", length: int = TEXT_LENGTH):
        spec = json.loads(tokenizer_json)
        spec["normalizer"] = _strip_lowercase(spec.get("normalizer"))
        spec["post_processor"] = None  # no BOS/EOS template: we place EOS ourselves
        spec["padding"] = None
        spec["truncation"] = None
        self.tokenizer = Tokenizer.from_str(json.dumps(spec))
        eos_id = self.tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"tokenizer has no EOS token {eos_token!r}")
        self.eos_id = eos_id
        if lowercase not in ("ascii", "unicode", "none"):
            raise ValueError("lowercase must be 'ascii' (reference), 'unicode' or 'none'")
        self.lowercase = lowercase
        self.length = length

    @classmethod
    def from_checkpoint(cls, directory: Path, **kwargs) -> "TextTokenizer":
        eos = "<eos>"
        config_path = directory / "tokenizer_config.json"
        if config_path.exists():
            eos_value = json.loads(config_path.read_text()).get("eos_token", eos)
            eos = eos_value.get("content", eos) if isinstance(eos_value, dict) else eos_value
        if (directory / "tokenizer.json").exists():
            return cls((directory / "tokenizer.json").read_text(encoding="utf-8"), eos_token=eos, **kwargs)
        from transformers import AutoTokenizer  # only a SentencePiece file: let transformers convert it

        converted = AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer.to_str()
        return cls(converted, eos_token=eos, **kwargs)

    def normalize(self, text: str) -> str:
        if self.lowercase == "ascii":
            return lowercase_ascii(text)
        return text.lower() if self.lowercase == "unicode" else text

    def __call__(self, texts: list[str]) -> TokenizedTexts:
        ids = np.full((len(texts), self.length), PAD_ID, dtype=np.int64)
        encodings = self.tokenizer.encode_batch([self.normalize(t) for t in texts], add_special_tokens=False)
        num_tokens, truncated, capitals = [], [], []
        for row, (text, encoding) in enumerate(zip(texts, encodings)):
            tokens = encoding.ids[: self.length - 1] + [self.eos_id]  # sticky EOS survives truncation
            ids[row, : len(tokens)] = tokens
            num_tokens.append(len(encoding.ids) + 1)
            truncated.append(len(encoding.ids) + 1 > self.length)
            if self.lowercase == "ascii" and has_unlowered_letters(text):
                capitals.append(text)
        long_texts = [(t, n) for t, n, cut in zip(texts, num_tokens, truncated) if cut]
        warnings = grouped([f"{short_text(t)!r}: {n} tokens" for t, n in long_texts],
                           f"truncated to {self.length} tokens (the model never saw longer texts)")
        warnings += grouped([repr(short_text(t)) for t in capitals],
                            "only ASCII letters are lowercased, as in the reference pipeline; other capitals are "
                            "kept (lowercase them yourself, or use lowercase='unicode')")
        return TokenizedTexts(ids, num_tokens, truncated, warnings)


def grouped(items: list[str], why: str, shown: int = 3) -> list[str]:
    """One warning for many items: "a, b, c and 97 more: why" (none for no items)."""
    if not items:
        return []
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return [f"{', '.join(items[:shown])}{more}: {why}"]


def short_text(text: str, limit: int = 40) -> str:
    """`text` cut to `limit` characters with an ellipsis: long inputs are never echoed back in full."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
