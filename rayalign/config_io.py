"""YAML + dotted overrides -> :class:`RecipeConfig`, with errors that name the file, line and key path.

Overrides follow Oumi's style: ``--training.learning_rate 1e-4`` or
``--data.train.datasets[0].path=x.jsonl``. Values are parsed as YAML scalars, so ``true``, ``3`` and
``[a, b]`` get their natural types. ``explain`` renders the resolved config with each field's doc and
the derived batch arithmetic.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rayalign.config import RL_TRAINERS, RecipeConfig, Section, cross_field_errors
from rayalign.errors import ConfigError

KeyPath = tuple[str | int, ...]
C = TypeVar("C", bound=BaseModel)
_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def parse_key_path(text: str) -> KeyPath:
    """``data.train.datasets[0].path`` -> ``('data', 'train', 'datasets', 0, 'path')``."""
    parts: list[str | int] = []
    for chunk in text.split("."):
        pos = 0
        for m in _PATH_TOKEN.finditer(chunk):
            if m.start() != pos:
                break
            parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
            pos = m.end()
        if pos != len(chunk) or not chunk:
            raise ConfigError(f"override --{text}: cannot parse key path near '{chunk}'")
    return tuple(parts)


def format_key_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def parse_overrides(args: Sequence[str]) -> list[tuple[KeyPath, Any]]:
    """``['--a.b', '1', '--c=x']`` -> ``[(('a','b'), 1), (('c',), 'x')]``."""
    result, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}': overrides look like --section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key} has no value")
            value, i = args[i + 1], i + 1
        result.append((parse_key_path(key), yaml.safe_load(value) if value != "" else ""))
        i += 1
    return result


def _set_path(data: dict, path: KeyPath, value: Any) -> None:
    node: Any = data
    for depth, (part, nxt) in enumerate(zip(path, path[1:] + (None,))):
        where = format_key_path(path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list):
                raise ConfigError(f"override --{format_key_path(path)}: '{where}' indexes a non-list")
            if part > len(node):
                raise ConfigError(f"override --{format_key_path(path)}: index {part} past the end "
                                  f"of a list of {len(node)}")
            if part == len(node):
                node.append({} if nxt is not None else None)
        elif not isinstance(node, dict):
            raise ConfigError(f"override --{format_key_path(path)}: '{where}' is not a section")
        if nxt is None:
            node[part] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]


def _yaml_line(root: yaml.Node | None, path: KeyPath) -> int | None:
    """Line (1-based) of the deepest node of ``path`` present in the composed YAML."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in path:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _data_path(data: Any, loc: Sequence[str | int]) -> KeyPath:
    """Drop pydantic's union-branch tags from ``loc``, keeping the keys that exist in the input."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and (part in node or last):
            node = node.get(part)
        elif isinstance(part, str) and not last:
            continue  # a union tag such as 'LoraConfig' or 'list[str]'
        out.append(part)
    return tuple(out)


def _model_at(path: KeyPath, root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def _describe(err: dict, path: KeyPath, root: type[BaseModel]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(path[:-1], root)
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(path[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


class _Source:
    """Where the raw config came from, to point errors at a file line or an override."""

    def __init__(self, path: Path | None, root: yaml.Node | None, overridden: list[KeyPath]):
        self.path, self.root, self.overridden = path, root, overridden

    def locate(self, key: KeyPath) -> str:
        for over in self.overridden:
            # the key is inside an override, or an override made it (``--bogus.key 1`` makes ``bogus``)
            if key[: len(over)] == over or (over[: len(key)] == key and not self._in_file(key)):
                return f"override --{format_key_path(over)}"
        if self.path is None:
            return "config"
        line = _yaml_line(self.root, key)
        return f"{self.path}:{line}" if line else str(self.path)

    def _in_file(self, key: KeyPath) -> bool:
        node = self.root
        for part in key:
            if not isinstance(node, yaml.MappingNode):
                return False
            node = next((v for k, v in node.value if k.value == part), None)
            if node is None:
                return False
        return True

    def error(self, key: KeyPath, message: str) -> str:
        """``file:line: key.path: message``; an override names its key once."""
        where, dotted = self.locate(key), format_key_path(key)
        return f"{where}: {message}" if where == f"override --{dotted}" else f"{where}: {dotted}: {message}"


def _read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    if path.is_dir():
        raise ConfigError(f"{path}: a directory, not a config file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}, root
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping of sections")
    _refuse_duplicate_keys(path, root)
    return data, root


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, where: str = "") -> None:
    """A key given twice in one mapping is an error: YAML would silently keep only the last one."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(path, item, f"{where}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value)
        dotted = f"{where}.{name}" if where else name
        if name in first:
            raise ConfigError(f"{path}:{key.start_mark.line + 1}: {dotted}: given twice (first on line "
                              f"{first[name]}); YAML would keep only this one")
        first[name] = key.start_mark.line + 1
        _refuse_duplicate_keys(path, value, dotted)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                kind: type[C] = RecipeConfig, updates: dict[str, Any] | None = None) -> C:
    """Load a config (a recipe, or ``kind``: a judge or an evaluation) from YAML, apply ``--key value``
    overrides and then ``updates`` (dotted keys to Python values, the API's overrides), validate."""
    file = Path(path) if path is not None else None
    data, root = _read_yaml(file) if file is not None else ({}, None)
    return _validate(data, _Source(file, root, []), parse_overrides(overrides) + _parsed(updates or {}), kind)


def recipes_writing(directory: str | Path, root: Path = Path("configs/recipes")) -> list[Path]:
    """The recipes under ``root`` whose run writes ``directory`` (its ``training.output_dir``, or that
    directory's ``final``), to tell a user which one to run first."""
    target = Path(directory).resolve()
    found = []
    for path in sorted(root.rglob("*.yaml")):
        try:
            out = (yaml.safe_load(path.read_text()) or {}).get("training", {}).get("output_dir")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if out and target in (Path(out).resolve(), Path(out).resolve() / "final"):
            found.append(path)
    return found


def with_overrides(cfg: C, updates: dict[str, Any]) -> C:
    """Python-API twin of CLI overrides: ``with_overrides(cfg, {"training.max_steps": 5})`` (a recipe, a judge
    or an evaluation config: the result is of the same kind)."""
    return _validate(cfg.model_dump(mode="json", exclude_unset=True), _Source(None, None, []), _parsed(updates),
                     type(cfg))


def _parsed(updates: dict[str, Any]) -> list[tuple[KeyPath, Any]]:
    """Dotted keys to Python values (the API's overrides) as parsed overrides."""
    return [(parse_key_path(key), value) for key, value in updates.items()]


def _validate(data: dict, source: "_Source", overrides: list[tuple[KeyPath, Any]], kind: type[C]) -> C:
    for key, value in overrides:
        _set_path(data, key, value)
        source.overridden.append(key)
    try:
        cfg = kind.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        key = _data_path(data, errs[0]["loc"])
        more = f" (+{len(errs) - 1} more; fix this one first)" if len(errs) > 1 else ""
        raise ConfigError(source.error(key, _describe(errs[0], key, kind) + more)) from exc
    for key, message in cross_field_errors(cfg):
        raise ConfigError(source.error(key, message))
    return cfg


def explain(cfg: RecipeConfig) -> str:
    """The resolved config, one field per line with its doc and, for a value the user left unset, where it
    came from ("(default)", or "(dapo default: DAPO, Yu et al. 2025)" for an algorithm's published value);
    then the derived batch arithmetic."""
    lines: list[str] = []
    _explain_model(cfg, 0, lines)
    lines.append("")
    lines.append("# derived")
    lines.extend(batch_arithmetic(cfg))
    if cfg.trainer == "verl_grpo":
        from rayalign.backends.verl import explained

        lines += ["", "# verl's config: the translation, then verl_overrides (written to OUTPUT_DIR/verl/config.yaml)",
                  explained(cfg)]
    return "\n".join(lines)


def _explain_model(model: Section, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        doc = field.description or ""
        mark = "" if name in model.model_fields_set else f" ({model.default_note(name)})"
        if isinstance(value, Section):
            lines.append(f"{pad}{name}:".ljust(44) + f"  # {doc}")
            _explain_model(value, indent + 1, lines)
        elif isinstance(value, list) and value and isinstance(value[0], Section):
            lines.append(f"{pad}{name}:".ljust(44) + f"  # {doc}")
            for item in value:
                sub: list[str] = []
                _explain_model(item, indent + 2, sub)
                sub[0] = f"{pad}  - {sub[0].lstrip()}"
                lines.extend(sub)
        else:
            rendered = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            rendered = rendered.removesuffix("\n...").strip()
            lines.append(f"{pad}{name}: {rendered}".ljust(44) + f"  # {doc}{mark}")


def batch_arithmetic(cfg: RecipeConfig) -> list[str]:
    """Human-readable batch sizes implied by the config (what users otherwise compute by hand)."""
    if cfg.trainer in RL_TRAINERS:
        a = cfg.algorithm
        samples = a.prompts_per_step * a.group_size
        mini = a.mini_batch_size or samples
        updates = math.ceil(samples / mini) * a.ppo_epochs
        return [
            f"samples per step = prompts_per_step {a.prompts_per_step} x group_size {a.group_size}"
            f" = {samples}",
            f"optimizer updates per step = ceil({samples} / mini_batch_size {mini}) x ppo_epochs "
            f"{a.ppo_epochs} = {updates}",
            f"rollout engines = {cfg.rollout.num_workers}, ~{math.ceil(samples / cfg.rollout.num_workers)}"
            " samples each per step",
        ]
    t, s = cfg.training, cfg.scaling
    global_batch = t.micro_batch_size * t.gradient_accumulation_steps * s.num_workers
    max_len = cfg.data.train.max_length if cfg.data else None
    lines = [
        f"global batch = micro_batch_size {t.micro_batch_size} x gradient_accumulation_steps "
        f"{t.gradient_accumulation_steps} x scaling.num_workers {s.num_workers} = {global_batch} "
        "sequences per optimizer step",
    ]
    if max_len:
        lines.append(f"tokens per step <= {global_batch} x data.train.max_length {max_len} = "
                     f"{global_batch * max_len}")
    if t.max_steps:
        lines.append(f"sequences seen = max_steps {t.max_steps} x {global_batch} = "
                     f"{t.max_steps * global_batch}")
    return lines
