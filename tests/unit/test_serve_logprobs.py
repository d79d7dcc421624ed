"""Log-prob shapes of the Serve app (``serve/logprobs.py``): a token's bytes are its own, so the bytes of the
tokens that split a UTF-8 character join back into it, though each decodes alone to the replacement character."""

from rayalign.serve.logprobs import TokenText


def test_bytes_of_split_characters_join_back_and_whole_tokens_are_their_text(tiny_tokenizer):
    text = TokenText(tiny_tokenizer)
    ids = tiny_tokenizer.encode("héllo ✓ 日本", add_special_tokens=False)
    assert "\N{REPLACEMENT CHARACTER}" in [text.text(i) for i in ids]  # some tokens hold part of a character
    assert bytes(b for i in ids for b in text.bytes(i)).decode() == "héllo ✓ 日本"
    whole = [i for i in ids if "\N{REPLACEMENT CHARACTER}" not in text.text(i)]
    assert all(bytes(text.bytes(i)) == text.text(i).encode() for i in whole)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert bytes(text.bytes(im_end)) == b"<|im_end|>"


def test_completion_offsets_continue_from_start_and_chat_entries_carry_bytes(tiny_tokenizer):
    text = TokenText(tiny_tokenizer)
    ids = tiny_tokenizer.encode("hello there", add_special_tokens=False)
    whole = text.completion(ids, [-1.0] * len(ids), [])
    tail = text.completion(ids[2:], [-1.0] * (len(ids) - 2), [], start=whole["text_offset"][2])
    assert tail["text_offset"] == whole["text_offset"][2:]  # a stream's later chunk continues the count
    assert whole["top_logprobs"] == [{}] * len(ids)
    chat = text.chat(ids[:1], [-0.5], [{ids[0]: -0.5, ids[1]: -2.0}])
    assert chat["refusal"] is None and chat["content"][0]["bytes"] == list(text.text(ids[0]).encode())
    assert [e["logprob"] for e in chat["content"][0]["top_logprobs"]] == [-0.5, -2.0]
