"""Log-probs in OpenAI's two shapes: chat's ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}``
and completions' ``{tokens, token_logprobs, text_offset, top_logprobs}``.

A token's ``bytes`` are its own bytes, not those of its decoded text: a byte-level BPE token holding part of a
UTF-8 character decodes to "\N{REPLACEMENT CHARACTER}" alone, while its bytes joined with its neighbours' give
the character back (what ``bytes`` is for).
"""

from __future__ import annotations

import re

from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


class TokenText:
    """A tokenizer's tokens as OpenAI's log-prob fields give them: text (decoded alone) and bytes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.byte_level = backend is not None and "ByteLevel" in repr(backend.decoder)
        self.unicode_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        self.added = set(tokenizer.get_added_vocab().values())

    def text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self.added or not isinstance(piece, str):
            return list(self.text(token_id).encode())
        if self.byte_level and all(c in self.unicode_byte for c in piece):
            return [self.unicode_byte[c] for c in piece]
        if match := BYTE_TOKEN.fullmatch(piece):
            return [int(match.group(1), 16)]
        if "\N{LOWER ONE EIGHTH BLOCK}" in piece:  # SentencePiece's word boundary
            return list(piece.replace("\N{LOWER ONE EIGHTH BLOCK}", " ").encode())
        return list(self.text(token_id).encode())

    def chat(self, tokens: list[int], logprobs: list[float], top: list[dict[int, float]]) -> dict:
        def entry(t: int, lp: float) -> dict:
            return {"token": self.text(t), "logprob": lp, "bytes": self.bytes(t)}

        return {"content": [
            {**entry(t, lp), "top_logprobs": [entry(k, v) for k, v in (top[j] if top else {}).items()]}
            for j, (t, lp) in enumerate(zip(tokens, logprobs))], "refusal": None}

    def completion(self, tokens: list[int], logprobs: list[float], top: list[dict[int, float]],
                   start: int = 0) -> dict:
        """``start``: the text offset of the first token (a stream's later chunks continue the count)."""
        strings = [self.text(t) for t in tokens]
        offsets = [start + sum(map(len, strings[:j])) for j in range(len(strings))]
        return {"tokens": strings, "token_logprobs": logprobs, "text_offset": offsets,
                "top_logprobs": [{self.text(k): v for k, v in step.items()} for step in top] if top
                else [{} for _ in tokens]}  # logprobs 0: no alternatives, still one (empty) map per token
