"""The pages under docs/ tell the truth: their Python runs, their files exist, their options are craft's.

README.md has its own, fuller checks (tests/test_readme.py) and docs/extending.md's
files and commands are checked by tests/test_extending.py; this file covers what
every page shows: Python blocks, experiment files, `--section.key` options and
each command's options, and links between pages.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))
TEXTS = {page.name: page.read_text(encoding="utf-8") for page in PAGES}
WITH_README = {**TEXTS, "../README.md": (ROOT / "README.md").read_text(encoding="utf-8")}
"""The option checks read the README too (tests/test_readme.py runs its examples, not its options)."""
SKIP = re.compile(r"<!-- (not run|file): [^>]*-->\s*$")
"""The comment before a Python block that is not a whole program: an illustration, or a file tested elsewhere."""


def python_blocks(text: str) -> list[tuple[str, str]]:
    """Each ```python block of a page with the text just before it (where a marker says it is not run)."""
    return [(text[: m.start()].rstrip().rsplit("\n", 1)[-1], m.group(1))
            for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]


def runnable_blocks() -> list[tuple[str, str]]:
    return [(name, block) for name, text in TEXTS.items() for before, block in python_blocks(text)
            if not SKIP.match(before)]


def test_every_python_block_runs_or_says_it_is_not_run():
    """A block is a whole program (it starts with its imports) or is marked `<!-- not run: why -->`."""
    unmarked = [f"{name}: {block.splitlines()[0]}" for name, block in runnable_blocks()
                if not block.lstrip().startswith(("from ", "import "))]
    assert not unmarked, f"python blocks neither whole programs nor marked '<!-- not run: why -->': {unmarked}"


RUNNER = """
import sys, traceback
blocks = eval(sys.stdin.read())
failed = []
for name, code in blocks:
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})  # its own namespace: its imports must be its own
    except Exception:
        failed.append(name + ":\\n" + code + traceback.format_exc(limit=-3))
print("\\n\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_the_docs_python_blocks_run_as_written():
    """Every runnable block, each in a fresh namespace, in one interpreter (importing torch once keeps it fast)."""
    blocks = [(f"docs/{name} block {i}", code) for i, (name, code) in enumerate(runnable_blocks())]
    assert blocks
    done = subprocess.run([sys.executable, "-c", RUNNER], input=repr(blocks), capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def named_files(text: str) -> set[str]:
    return set(re.findall(r"\b((?:experiments|benchmarks|examples|tests|craft|docs)/[\w./-]*\w)", text))


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_files_a_page_names_exist(name):
    """`experiments/gpt2_tiny.toml`, `benchmarks/gpu_check.sh`, ...: a file the page names is in the repository."""
    missing = sorted(f for f in named_files(TEXTS[name]) if not (ROOT / f).exists())
    assert not missing, f"docs/{name} names files that do not exist: {missing}"


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_links_resolve(name):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", TEXTS[name]):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / "docs" / path).resolve() if path else ROOT / "docs" / name
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file.read_text("utf-8"))):
            broken.append(target)
    assert not broken, f"docs/{name} links to what is not there: {broken}"


# --- options ------------------------------------------------------------------------------------------


def attrs_class(t):
    """The attrs class a field's type names (through `X | None`), else None."""
    for candidate in (t, *typing.get_args(t)):
        if attrs.has(candidate):
            return candidate
    return None


def is_key(cls, path: list[str]) -> bool:
    """Whether `path` names a field of the attrs class `cls`, going into nested records (`train.sample.prompt`)."""
    fields = {f.name: f for f in attrs.fields(attrs.resolve_types(cls))}
    if not path or path[0] not in fields:
        return False
    inner = attrs_class(fields[path[0]].type)
    return len(path) == 1 or (inner is not None and is_key(inner, path[1:]))


def is_config_key(key: str) -> bool:
    """`data.path`, `optim.lr`, `train.sample.prompt`, `sweep.optim.lr`: a key an experiment (some kind of it) has."""
    from craft.config import SWEEPABLE, Experiment, Optim, Sweep, config_class, registries

    section, *rest = key.split(".")
    if section == "sweep":
        return ".".join(rest) in SWEEPABLE or is_key(Sweep, rest)
    tables = {"model": "models", "data": "datasets", "task": "tasks", "optim": "optimizers", "schedule": "schedules"}
    if section not in tables:
        return is_key(Experiment, [section, *rest])
    if rest == ["kind"] or (section == "optim" and is_key(Optim, rest) and rest[0] != "config"):
        return True
    return any(is_key(config_class(entry), rest) for entry in registries()[tables[section]].values())


def test_is_config_key_tells_keys_from_others():
    assert all(map(is_config_key, ["data.path", "optim.lr", "optim.b1", "train.sample.max_new_tokens",
                                   "sweep.optim.lr", "data.augment.horizontal_flip", "model.kind", "name"]))
    assert not any(map(is_config_key, ["data.pth", "optim.lrr", "train.sample.nope", "sweep.model.width", "trian"]))


COMMAND_LINE = re.compile(r"(?:python -m craft|^\s*craft|`craft|torchrun [^`\n]*-m craft)((?:[ \t]+[^\s`]+)*)", re.M)


def craft_command_lines(text: str):
    """Each `craft ...` / `python -m craft ...` command a page shows: (words, options), `\\` continuations joined."""
    text = text.replace("\\\n", " ")
    for m in COMMAND_LINE.finditer(text):
        words = [w.strip("[]") for w in m.group(1).split()]
        options = [w.removeprefix("--").split("=")[0] for w in words if w.startswith("--")]
        yield [w for w in words if not w.startswith(("--", "#"))], options


def command_of(words: list[str]):
    """The `craft.cli` command the words run (`train` for `python -m craft EXP.toml`)."""
    from craft.cli import COMMANDS

    if words and words[0] in COMMANDS:
        command = COMMANDS[words[0]]
        if command.table is not None and len(words) > 1 and words[1] in command.table:
            return command.table[words[1]]
        return command
    return COMMANDS["train"]


@pytest.mark.parametrize("name", sorted(WITH_README))
def test_every_option_a_page_shows_is_real(name):
    """`--data.path=...` is a config key; `--prompt=...` an option of that command (named in its usage line)."""
    wrong = []
    for words, options in craft_command_lines(WITH_README[name]):
        usage = command_of(words).usage
        for option in options:
            real = is_config_key(option) or ("." not in option and re.search(rf"--{option}\b", usage))
            real = real or option.startswith("section.")  # the placeholder of `--section.key=value`
            if not real and option != "help":
                wrong.append(f"--{option} ({' '.join(words[:2])})")
    assert not wrong, f"docs/{name} shows options craft does not have: {wrong}"


DOTTED = re.compile(r"--([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w.-])")


@pytest.mark.parametrize("name", sorted(WITH_README))
def test_every_dotted_option_in_a_page_is_a_config_key(name):
    """`--train.sample=None` in the prose too: a key of the experiment's config."""
    wrong = sorted({key for key in DOTTED.findall(WITH_README[name]) if not key.startswith("section.") and not is_config_key(key)})
    assert not wrong, f"docs/{name} shows options that are no config keys: {wrong}"


SCRIPT_LINE = re.compile(r"python ((?:benchmarks|experiments|examples)/[\w/]+\.py)((?:[ \t]+[^\s`]+)*)")


@pytest.mark.parametrize("name", sorted(WITH_README))
def test_every_flag_of_a_script_a_page_runs_is_the_scripts(name):
    """`python benchmarks/gpt_speed.py --preset tiny`: the script's argparse takes `--preset`."""
    wrong = []
    for script, rest in SCRIPT_LINE.findall(WITH_README[name].replace("\\\n", " ")):
        source = (ROOT / script).read_text(encoding="utf-8")
        wrong += [f"{script} {flag}" for flag in re.findall(r"(?<![\w-])(--[\w-]+)", rest) if f'"{flag}"' not in source]
    assert not wrong, f"docs/{name} runs scripts with flags they do not take: {wrong}"


def keyword_options(function) -> set[str]:
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}


def test_every_command_usage_names_its_options():
    """`craft COMMAND --help` starts with the usage line: it names every option the command takes."""
    from craft.cli import COMMANDS

    commands = [c for command in COMMANDS.values() for c in ([command] if command.table is None else command.table.values())]
    missing = [f"{c.usage.split('[')[0].strip()}: --{o}" for c in commands for o in sorted(keyword_options(c.run))
               if not re.search(rf"--{o}\b", c.usage)]
    assert not missing, missing


def exists(dotted: str) -> bool:
    """Whether `craft.step.make_train_step` names a module, or a module's attribute (and so on down)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_every_craft_name_a_page_uses_exists(name):
    """`craft.compiling.backport_inductor_fixes`, `craft.optim.foreach.per_tensor`, ...: renamed code leaves no stale name."""
    missing = sorted(n for n in set(re.findall(r"\b(craft(?:\.\w+)+)", TEXTS[name])) if not exists(n))
    assert not missing, f"docs/{name} names what craft does not have: {missing}"
