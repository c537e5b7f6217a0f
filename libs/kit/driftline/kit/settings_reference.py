"""What a settings class reads, for people: ``--help`` text, ``--settings`` lines, the reference doc.

Every service's ``Settings`` (pydantic ``BaseSettings``, nested classes with their own prefixes)
is the one source of truth for its configuration; this module only reads it.
"""

from __future__ import annotations

import enum
import json
import re
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseSettings, SecretStr, ValidationError
from pydantic.env_settings import SettingsError
from pydantic.fields import ModelField

MASK = "**********"
# Values that grant access, whatever their type: masked by ``--settings``.
_SECRET_NAME = re.compile(r"(^|_)(token|tokens|password|secret|key)$")


@dataclass(frozen=True)
class Setting:
    """One environment variable a settings class reads."""

    path: tuple[str, ...]  # attribute path from the top settings object to the value
    env: tuple[str, ...]  # names it is read from, the first one found winning
    type: str
    default: str | None  # None: unset by default
    description: str
    secret: bool


def settings_of(cls: type[BaseSettings], path: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every variable ``cls`` reads, nested settings classes (own prefixes) included, in order."""
    for name, field in cls.__fields__.items():
        if _is_settings_class(field.outer_type_):
            yield from settings_of(field.outer_type_, (*path, name))
            continue
        yield Setting(
            path=(*path, name),
            env=_env_names(field),
            type=_type_name(field),
            default=_default(field),
            description=str(field.field_info.description or ""),
            secret=_is_secret(name, field),
        )


def _is_settings_class(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseSettings)


def _type_name(field: ModelField) -> str:
    tp = field.type_
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and field.outer_type_ is tp:
        return " | ".join(str(member.value) for member in tp)
    # ``Field(ge=1)`` turns ``int`` into ``ConstrainedIntValue``: name the type the operator writes.
    return _CONSTRAINED.sub(lambda m: m.group(1).lower(), field._type_display())


_CONSTRAINED = re.compile(r"Constrained(Int|Float|Str|Bytes|Decimal)Value")


def _env_names(field: ModelField) -> tuple[str, ...]:
    names = field.field_info.extra["env_names"]
    # A set when derived from the prefix (one name); a list, in lookup order, when given by ``env``.
    return tuple(n.upper() for n in (sorted(names) if isinstance(names, set) else names))


def _is_secret(name: str, field: ModelField) -> bool:
    return field.type_ is SecretStr or bool(_SECRET_NAME.search(name))


def _default(field: ModelField) -> str | None:
    """The default as written in the environment; None when the setting has none (unset)."""
    if field.required:
        return "required"
    if field.default_factory is not None:
        return render(field.default_factory())
    return None if field.default is None else render(field.default)


def render(value: Any) -> str:
    """``value`` as one would write it in the environment variable."""
    plain = _plain(value)
    if plain is None:
        return ""
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, (list, dict)):
        return json.dumps(plain, separators=(",", ":"))
    return str(plain)


def _from_here(path: Path) -> str:
    """A path inside the working directory, relative to it: a default computed from a package's
    location then reads the same on every checkout."""
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: secrets revealed (``masked`` hides them), enums as their
    values, paths as text."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return _from_here(value)
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def masked(setting: Setting, value: Any) -> str:
    """``value`` rendered for ``--settings``: secrets and passwords inside URLs are masked."""
    if value is None:
        return ""
    if setting.secret:
        if isinstance(value, dict):
            return json.dumps({k: MASK for k in value}, separators=(",", ":"))
        return MASK if render(value) else ""
    text = render(value)
    return _mask_url_password(text) if "://" in text else text


def _mask_url_password(text: str) -> str:
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def _value(settings: BaseSettings, path: tuple[str, ...]) -> Any:
    value: Any = settings
    for name in path:
        value = getattr(value, name)
    return value


def describe(cls: type[BaseSettings], width: int = 100) -> str:
    """The settings ``cls`` reads, as text for ``--help``."""
    lines = ["settings (environment variables):"]
    for setting in settings_of(cls):
        alternatives = f" (or {', '.join(setting.env[1:])})" if len(setting.env) > 1 else ""
        default = f" [default: {_shown(setting.default)}]"
        lines.append(f"  {setting.env[0]}{alternatives}  {setting.type}{default}")
        if setting.description:
            indent = " " * 6
            lines.extend(
                textwrap.wrap(setting.description, width, initial_indent=indent, subsequent_indent=indent)
            )
    return "\n".join(lines)


def _shown(default: str | None) -> str:
    if default is None:
        return "unset"
    return default if default else '""'


def effective(settings: BaseSettings) -> list[str]:
    """``NAME=value`` for every variable ``settings`` was built from, secrets masked."""
    return [f"{s.env[0]}={masked(s, _value(settings, s.path))}" for s in settings_of(type(settings))]


def problems(cls: type[BaseSettings]) -> list[str]:
    """What is wrong with the environment for ``cls``, one line per variable at fault, named as the
    operator set it; empty when ``cls`` builds. Nested classes are checked first and each on its
    own, so one run reports the faults of all of them (building ``cls`` stops at the first)."""
    found = [line for nested in _nested_classes(cls) for line in problems(nested)]
    if found:
        return found
    try:
        cls()
    except ValidationError as err:
        return _explain(err)
    except SettingsError as err:
        return [_explain_unparsable(cls, err)]
    return []


def _explain(err: ValidationError) -> list[str]:
    fields: dict[str, ModelField] = getattr(err.model, "__fields__", {})
    lines = []
    for error in err.errors():
        first = str(error["loc"][0]) if error["loc"] else ""
        field = fields.get(first)
        if field is None:  # a validator of the whole class (``__root__``)
            lines.append(str(error["msg"]))
            continue
        rest = "".join(f"[{part}]" for part in error["loc"][1:])
        lines.append(f"{_env_names(field)[0]}{rest}: {error['msg']}")
    return lines


def _explain_unparsable(cls: type[BaseSettings], err: SettingsError) -> str:
    """pydantic reads list and map variables as JSON and names the variable it could not parse."""
    named = re.search(r'env var "([^"]+)"', str(err))
    name = named.group(1).upper() if named else cls.__name__
    return f"{name}: not valid JSON ({err.__cause__})" if err.__cause__ else f"{name}: {err}"


def reference(services: Mapping[str, type[BaseSettings]]) -> str:
    """A Markdown reference of every service's settings. Settings classes that several services
    share (the broker, Redis, logging ...) get one section of their own, listed once."""
    users: dict[type[BaseSettings], list[str]] = {}
    for service, cls in services.items():
        for nested in _nested_classes(cls):
            users.setdefault(nested, []).append(service)
    shared = {cls: names for cls, names in users.items() if len(names) > 1}
    out = [
        "# Settings reference",
        "",
        "<!-- Generated by `make settings-doc` from the services' Settings classes; do not edit. -->",
        "",
        "Every service reads its settings from environment variables only; defaults suit a laptop",
        "against the local stack. `python -m driftline.services.<name> --help` prints this list for",
        "one service, and `--settings` prints the values the current environment gives (secrets",
        "masked) after validating them. JSON values (lists, maps) are written as JSON.",
        "",
    ]
    for service, cls in sorted(services.items()):
        out += [f"## {service}", ""]
        common = [c for c in _nested_classes(cls) if c in shared]
        if common:
            out += ["Also reads: " + ", ".join(f"[{_title(c)}](#{_anchor(c)})" for c in common) + ".", ""]
        out += _table(s for s in _own_settings(cls, shared))
    for cls, names in sorted(shared.items(), key=lambda item: _title(item[0])):
        out += [f"## {_title(cls)}", "", f"Read by {', '.join(sorted(names))}.", ""]
        out += _table(settings_of(cls))
    return "\n".join(out).rstrip() + "\n"


def _nested_classes(cls: type[BaseSettings]) -> list[type[BaseSettings]]:
    return [f.outer_type_ for f in cls.__fields__.values() if _is_settings_class(f.outer_type_)]


def _own_settings(cls: type[BaseSettings], shared: Mapping[type[BaseSettings], Any]) -> Iterator[Setting]:
    skip = {name for name, field in cls.__fields__.items() if field.outer_type_ in shared}
    return (s for s in settings_of(cls) if s.path[0] not in skip)


def _title(cls: type[BaseSettings]) -> str:
    prefix = str(cls.__config__.env_prefix).upper()
    return f"{cls.__name__} (`{prefix}*`)"


def _anchor(cls: type[BaseSettings]) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", _title(cls).lower()).replace(" ", "-")


def _table(settings: Iterator[Setting]) -> list[str]:
    rows = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for s in settings:
        names = " or ".join(f"`{env}`" for env in s.env)
        default = "*unset*" if s.default is None else f"`{_shown(s.default)}`"
        rows.append(f"| {names} | {_cell(s.type)} | {_cell(default)} | {_cell(s.description)} |")
    return [*rows, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
