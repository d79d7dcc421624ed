"""Row formats and their validation. Each validator returns ``[(field_path, problem), ...]``.

- ``sft``        conversation: ``{"messages": [{"role", "content"}, ...]}`` with at least one assistant turn
- ``preference`` ``{"prompt", "chosen", "rejected"}``; conversational (``prompt`` a message list,
                 ``chosen``/``rejected`` lists of assistant messages, TRL's layout) or flat strings
- ``kto``        unpaired: ``{"prompt", "completion", "label": bool}`` (strings or message lists)
- ``prompt``     RL prompts: ``{"prompt": str | messages, ...metadata}``; metadata goes to reward fns
- ``text``       pretraining: ``{"text": str}``
- ``vl_sft``     vision-language conversation: ``sft`` whose message contents may be lists of parts,
                 ``{"type": "text", "text": str}`` and ``{"type": "image", "image": path | URL | base64}``
                 (images in system and user turns only; ``data/images.py`` reads them)
- ``vl_prompt``  vision-language RL prompts: ``{"prompt": messages with parts, ...metadata}``
"""

from __future__ import annotations

from typing import Any, Callable

from rayalign.errors import UserError

ROLES = ("system", "user", "assistant", "tool")
Problems = list[tuple[str, str]]


def _messages(value: Any, field: str, *, need_assistant: bool, roles: tuple[str, ...] = ROLES) -> Problems:
    if not isinstance(value, list):
        return [(field, f"must be a list of messages, got {type(value).__name__}")]
    if not value:
        return [(field, "must not be empty")]
    problems: Problems = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            problems.append((where, f"must be an object with 'role' and 'content', got {type(msg).__name__}"))
            continue
        role = msg.get("role")
        if role not in roles:
            problems.append((f"{where}.role", f"must be one of {', '.join(roles)}, got {role!r}"))
        if not isinstance(msg.get("content"), str):
            got = "missing" if "content" not in msg else type(msg["content"]).__name__
            problems.append((f"{where}.content", f"must be a string, got {got}"))
    if need_assistant and not problems and not any(m.get("role") == "assistant" for m in value):
        problems.append((field, "has no assistant message to learn from"))
    return problems


def _text(value: Any, field: str) -> Problems:
    if not isinstance(value, str):
        got = "missing" if value is None else type(value).__name__
        return [(field, f"must be a string, got {got}")]
    if not value.strip():
        return [(field, "must not be empty")]
    return []


def _text_or_messages(value: Any, field: str, *, roles: tuple[str, ...] = ROLES) -> Problems:
    if isinstance(value, list):
        return _messages(value, field, need_assistant=False, roles=roles)
    return _text(value, field)


def check_sft(row: dict) -> Problems:
    if "messages" not in row:
        return [("messages", "is missing")]
    return _messages(row["messages"], "messages", need_assistant=True)


def check_preference(row: dict) -> Problems:
    problems: Problems = []
    for key in ("prompt", "chosen", "rejected"):
        if key not in row:
            problems.append((key, "is missing"))
    if problems:
        return problems
    problems += _text_or_messages(row["prompt"], "prompt")
    for key in ("chosen", "rejected"):
        problems += _text_or_messages(row[key], key, roles=("assistant",))
    if not problems and isinstance(row["chosen"], list) != isinstance(row["rejected"], list):
        problems.append(("rejected", "must have the same form as 'chosen' (both strings or both messages)"))
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        problems.append(("margin", "must be a number (how far the reward model must score chosen above rejected)"))
    return problems


def check_kto(row: dict) -> Problems:
    problems: Problems = [(k, "is missing") for k in ("prompt", "completion", "label") if k not in row]
    if problems:
        return problems
    problems += _text_or_messages(row["prompt"], "prompt")
    problems += _text_or_messages(row["completion"], "completion", roles=("assistant",))
    if not isinstance(row["label"], bool):
        problems.append(("label", f"must be true or false, got {row['label']!r}"))
    return problems


def check_prompt(row: dict) -> Problems:
    if "prompt" not in row:
        return [("prompt", "is missing")]
    return _text_or_messages(row["prompt"], "prompt")


def check_text(row: dict) -> Problems:
    return _text(row.get("text"), "text")


IMAGE_ROLES = ("system", "user")


def _parts(content: Any, where: str, role: Any) -> Problems:
    """A vision-language message's content: a string, or a non-empty list of text and image parts."""
    if isinstance(content, str):
        return []
    if not isinstance(content, list) or not content:
        got = "missing" if content is None else ("an empty list" if content == [] else type(content).__name__)
        return [(where, f"must be a string or a list of parts, got {got}")]
    problems: Problems = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            problems.append((at, f"must be an object with 'type', got {type(part).__name__}"))
            continue
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                problems.append((f"{at}.text", "must be a string"))
        elif kind == "image":
            if role not in IMAGE_ROLES:
                problems.append((at, f"is an image in a {role} turn; images go in {' or '.join(IMAGE_ROLES)} turns"))
            elif not isinstance(part.get("image"), str) or not part["image"].strip():
                problems.append((f"{at}.image", "must name an image: a path, URL or base64"))
        else:
            problems.append((f"{at}.type", f"must be 'text' or 'image', got {kind!r}"))
    return problems


def _vl_messages(value: Any, field: str, *, need_assistant: bool) -> Problems:
    if not isinstance(value, list) or not value:
        return [(field, "must be a non-empty list of messages")]
    problems: Problems = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            problems.append((f"{field}[{i}]", f"must be an object with 'role' and 'content', got {type(msg).__name__}"))
            continue
        if msg.get("role") not in ROLES:
            problems.append((f"{field}[{i}].role", f"must be one of {', '.join(ROLES)}, got {msg.get('role')!r}"))
        problems += _parts(msg.get("content"), f"{field}[{i}].content", msg.get("role"))
    if need_assistant and not problems and not any(m.get("role") == "assistant" for m in value):
        problems.append((field, "has no assistant message to learn from"))
    return problems


def check_vl_sft(row: dict) -> Problems:
    if "messages" not in row:
        return [("messages", "is missing")]
    return _vl_messages(row["messages"], "messages", need_assistant=True)


def check_vl_prompt(row: dict) -> Problems:
    if "prompt" not in row:
        return [("prompt", "is missing")]
    return _vl_messages(row["prompt"], "prompt", need_assistant=False)


def _vl_key(fmt: str) -> str:
    """The field holding a vision-language row's messages."""
    return "messages" if fmt == "vl_sft" else "prompt"


def image_parts(row: dict, fmt: str) -> list[tuple[str, dict]]:
    """(field path, part) of every image part of a valid ``vl_sft`` / ``vl_prompt`` row, in order."""
    key = _vl_key(fmt)
    return [(f"{key}[{i}].content[{j}]", part) for i, msg in enumerate(row[key])
            if isinstance(msg["content"], list) for j, part in enumerate(msg["content"]) if part["type"] == "image"]


def as_parts(row: dict, fmt: str) -> dict:
    """A valid vision-language row with every message content a list of parts: Arrow stores one form per field."""
    key = _vl_key(fmt)
    return {**row, key: [{**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str)
                          else m["content"]} for m in row[key]]}


CHECKS: dict[str, Callable[[dict], Problems]] = {
    "sft": check_sft,
    "preference": check_preference,
    "kto": check_kto,
    "prompt": check_prompt,
    "text": check_text,
    "vl_sft": check_vl_sft,
    "vl_prompt": check_vl_prompt,
}
VL_FORMATS = ("vl_sft", "vl_prompt")


def check_format(fmt: str) -> str:
    """``fmt`` when it names a data format; else a UserError naming ``--format`` and the formats."""
    if fmt not in CHECKS:
        raise UserError(f"--format must be one of {', '.join(CHECKS)}, got '{fmt}'")
    return fmt


def check_row(row: Any, fmt: str) -> Problems:
    """Problems with one row in format ``fmt``; empty when the row is valid."""
    if not isinstance(row, dict):
        return [("row", f"must be a JSON object, got {type(row).__name__}")]
    return CHECKS[fmt](row)
