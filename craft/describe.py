"""``craft info NAME``: a registry entry's table, section and TOML options with their defaults, or the keys
of an experiment table (``train``, ``train.sample``, ...)."""

from __future__ import annotations

from craft.commandline import UsageError, did_you_mean


SECTIONS = {"models": "model", "datasets": "data", "tasks": "task", "optimizers": "optim", "schedules": "schedule"}
"""Each registry table's TOML section."""


def describe(name: str) -> str:
    """Every registry entry called ``name``: its table, section and TOML options with defaults; or the
    keys of the experiment table ``name`` (``train``, ``train.sample``, ...)."""
    from craft.config import config_class, registries
    from craft.config.records import DEFAULT_LR, TABLES

    tables = registries()
    lines = []
    for table_name, table in tables.items():
        if name in table:
            section = SECTIONS.get(table_name, table_name)
            lines.append(f'{name}: in {table_name}; use it as [{section}] kind = "{name}"')
            lines += _keys(config_class(table[name]))
    if name in TABLES:
        header = f"[[{name}]]" if name == "optim.groups" else f"[{name}]"
        kinds = "; besides these, [optim] takes its kind's options (craft info KIND)" if name == "optim" else ""
        lines += [f"{header} keys (None: off or unset){kinds}:",
                  *_keys(TABLES[name], skip={"kind", "config"}, defaults={"lr": DEFAULT_LR})]
    if not lines:
        known = sorted({entry for table in tables.values() for entry in table} | set(TABLES))
        raise UsageError(f"craft info: nothing registered as {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    return "\n".join(lines)


def _keys(record: type, skip: set[str] = frozenset(), defaults: dict | None = None) -> list[str]:
    """``  name: type = default`` for each field of the attrs class ``record`` (``defaults``: those the
    config reader fills in)."""
    import attrs

    # As written in the class: cattrs resolves a string field.type into a typing object once it structures one.
    written = {k: v for c in reversed(record.__mro__) for k, v in vars(c).get("__annotations__", {}).items()}
    lines = []
    for field in attrs.fields(record):
        if field.name in skip:
            continue
        factory = field.default if isinstance(field.default, attrs.Factory) else None
        default = field.default if factory is None else None if factory.takes_self else factory.factory()
        default = (defaults or {}).get(field.name, default)
        shown = "(required)" if default is attrs.NOTHING else f"= {default!r}"
        if factory is not None and factory.takes_self:  # a default drawn from the other keys: its docstring says how
            shown = f"= {factory.factory.__doc__}"
        kind = written.get(field.name, field.type)
        kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        lines.append(f"  {field.name}: {kind} {shown}")
    return lines
