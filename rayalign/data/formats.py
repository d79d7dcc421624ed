"""Row formats and their validation. Each validator returns ``[(field_path, problem), ...]``.

- ``sft``        conversation: ``{"messages": [{"role", "content"}, ...]}`` with at least one assistant turn
- ``preference`` ``{"prompt", "chosen", "rejected"}``; conversational (``prompt`` a message list,
                 ``chosen``/``rejected`` lists of assistant messages, TRL's layout) or flat strings
- ``kto``        unpaired: ``{"prompt", "completion", "label": bool}`` (strings or message lists)
- ``prompt``     RL prompts: ``{"prompt": str | messages, ...metadata}``; metadata goes to reward fns
- ``text``       pretraining: ``{"text": str}``
"""

from __future__ import annotations

from typing import Any, Callable

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


CHECKS: dict[str, Callable[[dict], Problems]] = {
    "sft": check_sft,
    "preference": check_preference,
    "kto": check_kto,
    "prompt": check_prompt,
    "text": check_text,
}


def check_row(row: Any, fmt: str) -> Problems:
    """Problems with one row in format ``fmt``; empty when the row is valid."""
    if not isinstance(row, dict):
        return [("row", f"must be a JSON object, got {type(row).__name__}")]
    return CHECKS[fmt](row)
