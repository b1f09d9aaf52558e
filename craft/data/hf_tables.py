"""Hugging Face dataset files on disk: which split each table file is, and reading them into one table per split.

``path`` is a folder written by ``save_to_disk``, a Parquet or Arrow file, or a
folder of them. A folder of files is split by the words of its folder and file
names, as ``datasets`` splits one (``split_of``); a split's files are joined
into one table (integer and string widths unified). A file that holds no table
(a Git LFS pointer left by a clone without ``git lfs``, damage) is one line
naming it.
"""

from __future__ import annotations

from pathlib import Path

from craft.data.files import shown
from craft.data.splits import SPLIT_KEYWORDS, split_word  # noqa: F401  (SPLIT_KEYWORDS: re-exported)

TABLE_SUFFIXES = (".parquet", ".arrow")
EXTRA = "pip install 'craft[hf]' (or: pip install datasets)"


def require_datasets():
    """The ``datasets`` module; a ValueError naming the extra when it is not installed."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"data.kind = 'hf_dataset' needs the Hugging Face datasets package: {EXTRA}") from None
    return datasets


def split_of(relative: str | Path) -> str:
    """The split a table file belongs to by its path below the dataset's folder, as ``datasets`` splits
    one: a split's word set off by ``-._``, a space or digits (``SPLIT_KEYWORDS``) in a folder's name, the
    nearest first, else in the file's name; other files are train.

    ``data/train-00000-of-00002.parquet`` -> train, ``default/partial-test/0000.parquet`` -> test,
    ``mnist_dev.parquet`` -> validation, ``shard-0.parquet`` -> train.
    """
    parts = Path(relative).parts
    for part in [*reversed(parts[:-1]), parts[-1]] if parts else []:
        if split_word(part) is not None:
            return split_word(part)
    return "train"


LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _read_table_file(path: Path):
    """The table in Parquet or Arrow file ``path``; a ValueError naming it when it holds none (a Git LFS
    pointer, as a clone of a Hub repository without ``git lfs`` leaves, or damage)."""
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        return require_datasets().Dataset.from_file(str(path)).data.table
    except Exception as e:  # pyarrow and datasets raise many kinds (ArrowInvalid, OSError, ...) on such files
        raise unreadable_table(path, e, [path]) from None


def unreadable_table(path: Path, error: Exception, files: list[Path]) -> ValueError:
    """The error for a dataset at ``path`` that ``error`` stopped: the first of ``files`` that is a Git LFS
    pointer and how to fetch it, else ``error``'s first line."""
    for file in files:
        with open(file, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                return ValueError(
                    f"cannot read {shown(file)}: it is a Git LFS pointer, not the data (the repository was cloned "
                    f"without git lfs); run `git lfs pull` in the clone"
                )
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"cannot read {shown(path)} ({reason}); replace or delete it")


def concat_split(split: str, tables: list, files: list[Path]):
    """One table of a split's files; integer and string widths are unified (int32 with int64), and
    columns that still differ are a ValueError naming the two files."""
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        first = tables[0].schema
        k = next((k for k, t in enumerate(tables) if not _joinable(first, t.schema)), len(tables) - 1)
        other = tables[k].schema
        differ = [f"{n} ({first.field(n).type} vs {other.field(n).type})" for n in first.names
                  if n in other.names and not _joinable(pa.schema([first.field(n)]), pa.schema([other.field(n)]))]
        raise ValueError(
            f"the {split} files {shown(files[0])} and {shown(files[k])} hold the same columns as other types: "
            f"{', '.join(differ) or f'{first} vs {other}'}; convert them to one type"
        ) from None


def _joinable(a, b) -> bool:
    import pyarrow as pa

    try:
        pa.unify_schemas([a, b], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def read_tables(path: str | Path) -> tuple[dict[str, object], list[str]]:
    """``({split: pyarrow.Table}, files)`` of the dataset at ``path``, and the files read (for a fingerprint)."""
    datasets = require_datasets()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist; point it at a save_to_disk folder or Parquet files")
    if path.is_dir() and any((path / marker).exists() for marker in ("dataset_dict.json", "state.json")):
        files = sorted(p for p in path.rglob("*") if p.is_file())
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=False)
        except Exception as e:  # datasets and pyarrow raise many kinds on damaged or missing files
            raise unreadable_table(path, e, [f for f in files if f.suffix == ".arrow"]) from None
        parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        tables = {name: part.with_format("arrow")[:] for name, part in parts.items()}  # this split's rows only
        return tables, [str(f) for f in files]
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in TABLE_SUFFIXES)
    files = [p for p in files if p.suffix in TABLE_SUFFIXES]
    if not files:
        raise ValueError(
            f"no Parquet or Arrow files in {path}, and no save_to_disk dataset (dataset_dict.json or state.json); "
            f"point data.path at one"
        )
    grouped: dict[str, list[Path]] = {}
    for file in files:
        grouped.setdefault(split_of(file.relative_to(path) if path.is_dir() else file.name), []).append(file)
    tables = {split: concat_split(split, [_read_table_file(f) for f in parts], parts) for split, parts in grouped.items()}
    return tables, [str(f) for f in files]
