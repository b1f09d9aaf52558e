"""Shared models, data and CLI helpers for the tests (importable as ``conftest`` under plain ``pytest``)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import forked_cli
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from torch import nn

from craft.data.shapes import write_shapes_folder
from craft.models import SmallCNN

ROOT = Path(__file__).resolve().parent.parent

# pytest-xdist workers share the cores: each worker's torch, and the craft
# processes its tests start, get a share of the threads instead of all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that hold a ``slow`` test first, the rest after, each in its own order.

    pytest-xdist hands out whole modules (``--dist=loadfile``) in this order
    (``--no-loadscope-reorder``); by default it sends the modules with the most
    tests first, which left a 50 s compile for last, one worker idle meanwhile.
    """
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)


settings.register_profile("craft", deadline=None, print_blob=True)
# CI (and a local `bash .ci/run`, which sets CI): the same examples every run, so a red build replays.
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "craft")


def run_cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m craft ARGS`` as a process of its own, output captured (``subprocess.run``'s result),
    forked from one that has imported craft already (``forked_cli``: the same command, without 6 s of imports)."""
    return forked_cli.run(list(args), cwd=cwd, env=env, timeout=timeout)


def evaluated_without_the_train_data(run_dir: Path, data: Path, test: Path) -> tuple[dict, dict, list[str]]:
    """``craft evaluate RUN --data.val_path=TEST`` with the run's ``data`` given, then alone once ``data`` is moved
    away: ``(with_train, alone, what alone said)``."""
    from craft import trained

    with_train = trained.evaluate(run_dir, data={"data.path": str(data), "data.val_path": str(test)})
    data.rename(data.with_name(data.name + "-gone"))
    said = []
    alone = trained.evaluate(run_dir, data={"data.val_path": str(test)}, say=said.append)
    return with_train, alone, said


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    """The params of the newest step checkpoint of ``run_dir``."""
    latest = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(latest, weights_only=True)["state"]["params"]


TINY_CNN = """
name = "cnn"
seed = 0
out_dir = "{{out}}"

[model]
kind = "cnn"
{model}
[data]
kind = "image_folder"
path = "{{data}}"
batch_size = 8
num_threads = 0

{rest}"""

TINY_TRAIN = """
[train]
steps = 4
eval_every = 2
log_every = 2
eval_batches = 1
compile = false
"""


def tiny_cnn(rest: str = TINY_TRAIN, *, model: str = "") -> str:
    """The TOML of the seed CNN on an image folder, batches of 8, then ``rest`` (its ``[optim]``,
    ``[schedule]``, ``[train]`` sections; ``model``: more ``[model]`` keys). A template: fill in
    ``{out}`` (the runs folder) and ``{data}`` (the image folder) with ``str.format``.

    ``model.num_classes`` is left to the data, as the shipped experiments leave it.
    """
    return TINY_CNN.format(model=model, rest=rest)


def tiny_gpt(
    tmp_path: Path, rest: str, *, batch_size: int = 8, text: str = "the cat sat on the mat\n" * 50, model: str = ""
) -> Path:
    """A one-block GPT (width 32, context 16) on ``text`` written to ``tmp_path``, then ``rest`` (its
    ``[optim]``, ``[train]`` sections; ``model``: more ``[model]`` keys): the config file's path; the
    run is ``tmp_path/runs/gpt``. ``model.block_size`` is left to the data unless ``model`` sets it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    config = tmp_path / "gpt.toml"
    config.write_text(f"""name = "gpt"
out_dir = "{tmp_path / 'runs'}"
[model]
kind = "gpt"
n_layer = 1
n_head = 2
n_embd = 32
{model}
[data]
kind = "text"
path = "{corpus}"
block_size = 16
batch_size = {batch_size}
[task]
kind = "language_model"
{rest}""")
    return config


# -- a tiktoken encoding that exists only in a local cache ------------------------------------------

TIKTOKEN_URL = "https://craft.invalid/tests/craft_test.tiktoken"  # never fetched: its blob is in the cache
TIKTOKEN_PLUGIN = """from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str


def craft_test():
    ranks = load_tiktoken_bpe({url!r}, expected_hash={sha256!r})
    return {{"name": "craft_test", "pat_str": r50k_pat_str, "mergeable_ranks": ranks,
            "special_tokens": {{"<|endoftext|>": len(ranks)}}}}


ENCODING_CONSTRUCTORS = {{"craft_test": craft_test}}
"""
NO_NETWORK = """import socket


def refuse(*args, **kwargs):
    raise AssertionError("the network was touched")


socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
"""


def tiktoken_ranks(words: list[str]) -> bytes:
    """A tiktoken ranks file (``base64(token) rank`` a line): the 256 bytes, then each prefix of
    each word as a merge, so every token is reachable from two of lower rank."""
    tokens = [bytes([b]) for b in range(256)]
    for word in map(str.encode, words):
        tokens += [word[:end] for end in range(2, len(word) + 1) if word[:end] not in tokens]
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(tokens))


@pytest.fixture
def local_tiktoken(tmp_path, monkeypatch) -> str:
    """The name of a tiktoken encoding (``"craft_test"``) that Pythons started from the test can use
    offline only: a ``tiktoken_ext`` plugin on ``PYTHONPATH`` whose ranks blob sits in
    ``TIKTOKEN_CACHE_DIR`` under tiktoken's own name for it (sha1 of its URL), with its sha256
    checked, as gpt2's would be; a ``sitecustomize`` there makes any socket use an AssertionError."""
    pytest.importorskip("tiktoken")
    ranks = tiktoken_ranks([" the", " def", " return", " self", "    ", "import", " in", " for", "\n\n"])
    cache, site = tmp_path / "tiktoken-cache", tmp_path / "site"
    (site / "tiktoken_ext").mkdir(parents=True)
    cache.mkdir()
    (cache / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest()).write_bytes(ranks)
    plugin = TIKTOKEN_PLUGIN.format(url=TIKTOKEN_URL, sha256=hashlib.sha256(ranks).hexdigest())
    (site / "tiktoken_ext" / "craft_test.py").write_text(plugin)
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return "craft_test"


def shapes_folder(root: Path, num_train: int = 16, num_val: int = 8) -> Path:
    """The synthetic shapes written as an image folder of 32x32 PNGs under ``root/shapes``."""
    return write_shapes_folder(root / "shapes", num_train=num_train, num_val=num_val, image_size=32, seed=0)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """A small shapes image folder (16 train, 8 val images), written once per test session."""
    return shapes_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture
def one_thread():
    """One intra-op thread, for tests of tiny models.

    They gain nothing from threads, and on a busy machine each parallel region
    can wait ~10 ms for a descheduled thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def cnn() -> nn.Module:
    return SmallCNN(num_classes=4)


def bn_dropout_net(p: float = 0.5) -> nn.Module:
    """BatchNorm (buffers to thread) and dropout (randomness to seed)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # no bias: BN would cancel it
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Dropout(p),
        nn.Linear(8 * 8 * 8, 4),
    )


MODELS = {"mlp": mlp, "cnn": cnn, "bn_dropout": bn_dropout_net}


def batch_for(name: str, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (size, 8) if name == "mlp" else (size, 3, 32, 32)
    return {"input": torch.randn(shape, generator=g), "target": torch.randint(0, 4, (size,), generator=g)}


def cross_entropy(outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = F.cross_entropy(outputs, batch["target"])
    accuracy = (outputs.argmax(-1) == batch["target"]).float().mean()
    return loss, {"accuracy": accuracy}
