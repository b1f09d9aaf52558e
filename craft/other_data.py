"""Evaluating a run on data other than its own (``craft evaluate RUN --data.val_path=...``).

The other data is read the way the run read its own: the run's saved
``[data]`` with only the keys given replaced (``other_experiment``), its
tokens renumbered to the run's ``tokenizer.json`` (``in_run_vocabulary``: a
character test file builds a vocabulary of its own characters only; token
files must be encoded with the run's own BPE or tiktoken tokenizer, ``craft
prepare tokens SRC... OUT --tokenizer=RUN``, as another's ids cannot be
renumbered), and its class names checked against the run's ``classes.json`` (``check_classes``), or, when
``--data.val_path`` alone is given, the test set read alone (``test_set_only``) and its labels renumbered to the
run's classes (``in_run_classes``); a resumed run's data too
(``check_same_data_files``). Its data's
own errors are said for evaluate where training's advice would not fit (``other_val_data``).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import attrs
import torch

from craft.config import ConfigError, Experiment
from craft.config import load as load_config
from craft.data.bpe import is_subword
from craft.data.checks import UnknownClasses
from craft.data.listing import SplitFolders
from craft.data.tokenizers import load_tokenizer, saved_as
from craft.rundir import CLASSES_FILE, CONFIG_FILE, TOKENIZER_FILE, RunError
from craft.words import few, listed, plural


def other_experiment(run_dir: Path, exp: Experiment, data: dict[str, str]) -> Experiment:
    """``exp`` with only ``[data]`` keys replaced by ``data`` (as typed), checked as strictly as a config."""
    others = sorted(k for k in data if not k.startswith("data."))
    if others:
        raise ConfigError([f"craft evaluate takes [data] options only (--data.path, --data.val_path, ...), not --{others[0]}"])
    kind = data.get("data.kind", exp.data.kind).strip("'\"")
    if kind != exp.data.kind:
        raise ConfigError([f"data.kind: craft evaluate reads other data with the run's own kind ({exp.data.kind!r}); "
                           f"train a run on {kind!r} data to evaluate on it"])
    try:
        other = load_config(run_dir / CONFIG_FILE, texts=data)
    except ConfigError as e:  # "did you mean" names keys of the run's kind, which may have none like it
        given = {k.removeprefix("data.") for k in data}
        raise ConfigError([_no_such_key(line, exp.data.kind, given) for line in e.problems]) from None
    config = other.data.config
    if getattr(config, "prepare", None) is not None and "data.prepare" not in data:
        # The run's own data may be made where it is missing; a test set never is: a mistyped path would
        # be filled with fresh synthetic data and evaluated as if it were the user's.
        config = attrs.evolve(config, prepare=None)
    if test_set_only(run_dir, config, data):
        # The test set stands in for the train split, which an image or caption folder builds only for its
        # classes or vocabulary: the run's classes.json and tokenizer.json give those, so the run's own data
        # need not still be on disk (``in_run_classes``, ``in_run_vocabulary`` renumber to them).
        config = attrs.evolve(config, path=config.val_path)
    return attrs.evolve(exp, data=attrs.evolve(other.data, config=config))


def test_set_only(run_dir: Path, config, data: dict[str, str]) -> bool:
    """Whether evaluate reads only ``--data.val_path``: given without ``--data.path``, for a run whose
    ``classes.json`` or ``tokenizer.json`` fixes what its labels and token ids mean."""
    saved = (run_dir / CLASSES_FILE).is_file() or (run_dir / TOKENIZER_FILE).is_file()
    return "data.path" not in data and getattr(config, "val_path", None) is not None and saved


def other_val_data(run_dir: Path, used: Experiment, build):
    """``build(used, "val")``: the other data's val split, its errors said as fits ``craft evaluate``: a class the
    run was not trained on is not to be added to train, and a val_path holding split folders names the one to give."""
    try:
        return build(used, "val")
    except UnknownClasses as e:
        raise untrained(run_dir, e.unknown) from None
    except SplitFolders as e:
        if e.key != "data.val_path":
            raise
        raise RunError(
            f"--data.val_path {e.folder} holds split folders ({', '.join(e.names)}), not class folders; "
            f"evaluate on one of them: --data.val_path={shlex.quote(str(e.split))}"
        ) from None


def untrained(run_dir: Path, unknown: list[str]) -> RunError:
    """The error for test images of classes ``unknown`` that the run was not trained on."""
    saved = run_dir / CLASSES_FILE
    has = f" (its {CLASSES_FILE} has {few(json.loads(saved.read_text(encoding='utf-8')))})" if saved.exists() else ""
    which = f"class {unknown[0]!r}" if len(unknown) == 1 else f"classes {few(unknown)}"
    return RunError(f"the run was not trained on {which}{has}; remove those images from the test set")


def in_run_classes(run_dir: Path, batches):
    """``batches`` as they are, or, when their classes (a test set's own, sorted) are not the run's
    ``classes.json``, with each label renumbered to the run's position of its class."""
    saved, classes = run_dir / CLASSES_FILE, getattr(batches, "classes", None)
    if not classes or not saved.is_file():
        return batches
    run = json.loads(saved.read_text(encoding="utf-8"))
    if list(classes) == run:
        return batches
    if unknown := [c for c in classes if c not in run]:
        raise untrained(run_dir, unknown)
    return InRunClasses(batches, torch.tensor([run.index(c) for c in classes], dtype=torch.int64), run)


class InRunClasses:
    """``batches`` whose ``label``s are mapped through ``ids`` to the run's classes (``run``, a list of
    names, is ``classes``); every other attribute is ``batches``'s."""

    def __init__(self, batches, ids: torch.Tensor, run: list[str]) -> None:
        self.batches, self.ids, self.classes = batches, ids, run

    def __getattr__(self, name: str):
        return getattr(self.batches, name)

    def __iter__(self):
        for batch in self.batches:
            yield {k: self.ids[v] if k == "label" else v for k, v in batch.items()}


def _no_such_key(problem: str, kind: str, given: set[str]) -> str:
    key = problem.split(":")[0]
    if ": unknown key" not in problem or key.removeprefix("data.") not in given:
        return problem
    return f"{key}: the run's data (kind {kind!r}) has no such key; craft info {kind} lists those it has"


def in_run_ids(run_dir: Path, batches, used: Experiment, data: dict[str, str]):
    """Other data's ``batches`` with the run's token ids (``in_run_vocabulary``) and, unless ``--data.path``
    gave the classes' train split, the run's labels (``in_run_classes``); captions that fit the run's model."""
    path = getattr(used.data.config, "path", None)
    if used.task.kind == "captioning":
        check_caption_length(batches, getattr(used.model.config, "block_size", None), path)
    batches = in_run_vocabulary(run_dir, batches, path)
    return batches if "data.path" in data else in_run_classes(run_dir, batches)


def check_caption_length(batches, block_size: int | None, path: str | None) -> None:
    """Captions longer than the run's ``block_size`` (its longest training caption's tokens + 1) do not fit
    its model: one line saying so, not the model's error on the first batch."""
    length = getattr(batches, "block_size", None)
    if block_size is None or length is None or length <= block_size:
        return
    raise RunError(
        f"the captions of {path or 'the other data'} are longer than the run's model takes: the longest has "
        f"{length - 1} tokens, the run's at most {block_size - 1} (model.block_size = {block_size}, from the longest "
        f"caption it trained on); leave out or cut the captions of more than {block_size - 1} tokens"
    )


def in_run_vocabulary(run_dir: Path, batches, path: str | None = None):
    """``batches`` as they are, or, when their tokenizer is not the run's, with ids renumbered to the run's:
    character and word ids only. A BPE or tiktoken token is a piece of bytes that the run's tokenizer cuts
    otherwise, so another subword tokenizer's ids are refused, naming how to encode ``path``'s text with the run's."""
    if not tokenizer_differs(run_dir, batches):
        return batches
    saved, tokenizer = run_dir / TOKENIZER_FILE, batches.tokenizer
    run = load_tokenizer(saved)
    if is_subword(tokenizer) or is_subword(run):
        raise RunError(
            f"{path or 'the other data'} was tokenized with another tokenizer than the run's {TOKENIZER_FILE}, so its "
            f"ids mean other text; encode its text with the run's: craft prepare tokens SRC... OUT "
            f"--tokenizer={shlex.quote(str(run_dir))}, then evaluate on OUT"
        )
    return InRunVocabulary(batches, run_ids(tokenizer, run), run)


def run_ids(other, run) -> torch.Tensor:
    """int64 ``(other.vocab_size,)``: the id in the run's tokenizer of each token of ``other``, the tokenizer
    that other data built from its own text (a character tokenizer of a test file holds only its characters,
    so its ids mean other characters than the run's: 'a' may be 3 there and 40 in the run)."""
    ids, unknown = [], []
    for piece in (other.decode([i]) for i in range(other.vocab_size)):
        try:
            found = run.encode(piece)
        except ValueError:  # UnknownCharactersError, UnknownWordsError
            found = []
        if len(found) == 1:
            ids += found
        else:  # unknown, or several tokens of the run's (a subword tokenizer): no id to map it to
            unknown.append(piece)
    if unknown:
        raise RunError(
            f"the other data has {len(unknown)} token(s) the run's {TOKENIZER_FILE} lacks: {listed(unknown)}; the model has "
            "no id for them, so evaluate on text made only of the run's characters or words"
        )
    return torch.tensor(ids, dtype=torch.int64)


class InRunVocabulary:
    """``batches`` whose token ids (``input``, ``target``; padding targets stay) are mapped to the run's
    tokenizer through ``ids`` (``run_ids``); ``tokenizer`` and ``vocab_size`` are the run's (``run``), whose
    ids the batches hold; every other attribute is ``batches``'s."""

    def __init__(self, batches, ids: torch.Tensor, run) -> None:
        self.batches, self.ids = batches, ids
        self.tokenizer, self.vocab_size = run, run.vocab_size

    def __getattr__(self, name: str):
        return getattr(self.batches, name)

    def __iter__(self):
        for batch in self.batches:
            yield {k: self._mapped(v) if k in ("input", "target") else v for k, v in batch.items()}

    def _mapped(self, tokens: torch.Tensor) -> torch.Tensor:
        real = tokens >= 0  # a padding target (-100) stays as it is
        return torch.where(real, self.ids[tokens.clamp(min=0)], tokens)


def tokenizer_differs(folder: Path, data) -> bool:
    """Whether ``data``'s tokenizer saves otherwise than ``folder``'s ``tokenizer.json`` (``saved_as``): its ids mean
    other text. False where either has none (image data, a run from before tokenizer.json)."""
    tokenizer, saved = getattr(data, "tokenizer", None), folder / TOKENIZER_FILE
    return tokenizer is not None and saved.is_file() and not saved_as(tokenizer, saved)


def classes_differ(run_dir: Path, classes: list[str] | None, whose: str = "the run's") -> str | None:
    """How ``classes`` differ from the run's ``classes.json`` (None when they match, for text data, or for a run
    from before classes.json): a label is a position in that list, so another list scores (or trains) every
    image against the wrong class. ``whose`` names the folder in words."""
    saved = run_dir / CLASSES_FILE
    if not classes or not saved.exists():
        return None
    expected = json.loads(saved.read_text(encoding="utf-8"))
    if list(classes) == expected:
        return None
    missing, extra = [c for c in expected if c not in classes], [c for c in classes if c not in expected]
    differ = f"lacks {missing[:5]}" if missing else f"adds {extra[:5]}" if extra else "orders them otherwise"
    return f"the data's classes differ from {whose} ({CLASSES_FILE}: {plural(len(expected), 'class', 'classes')}): it {differ}"


def check_classes(run_dir: Path, classes: list[str] | None) -> None:
    """Other data must name the run's classes in the run's order (``classes_differ``)."""
    if differ := classes_differ(run_dir, classes):
        raise RunError(f"{differ}; evaluate with the run's data.path and the other images as --data.val_path")


def check_same_data_files(run_dir: Path, data) -> None:
    """A resumed run (or sweep member, ``run_dir``) must read data with the vocabulary and classes it trained
    with (its ``tokenizer.json``, ``classes.json``): token files prepared again, an edited character corpus or
    a class folder added or renamed give ids and labels that mean something else."""
    again = "resume on the data the run trained on, or start a new run"
    if tokenizer_differs(run_dir, data):
        raise RunError(
            f"cannot resume: the data's tokenizer differs from {str(run_dir / TOKENIZER_FILE)!r} (was data.path prepared again, or the "
            f"text edited?), so its token ids mean other text; {again}"
        )
    if differ := classes_differ(run_dir, getattr(data, "classes", None)):
        raise RunError(f"cannot resume: {differ}, so its labels mean other classes; {again}")
