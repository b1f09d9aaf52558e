"""Captioned images: captions files, batches, splits, errors, synthetic scenes, the written folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

import attrs
import pytest
import torch
from PIL import Image

from craft.config import ConfigError, dumps, loads
from craft.data import DATASETS, CaptionFolderConfig, ShapeCaptionsConfig, WordTokenizer, write_caption_folder
from craft.data import scenes
from craft.data.captions import read_captions
from craft.data.text import IGNORE_INDEX

SIZE = 6
CAPTIONS = {  # gray level of the image -> its captions
    10: ["a dark square"],
    40: ["a gray square", "the second caption of forty"],
    70: ["a light one"],
    100: ["lighter still here"],
    130: ["x"],
    160: ["a much longer caption than the others here"],
}


def solid(path: Path, value: int, size: int = SIZE) -> Path:
    """A ``size`` square image of gray level ``value``: ``value`` identifies the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path)
    return path


def write_jsonl(folder: Path, rows: list[dict] | list[str], name: str = "captions.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return folder / name


def captioned_folder(folder: Path, captions: dict[int, list[str]] = CAPTIONS, *, sub: str = "") -> Path:
    """Images ``<sub>/<level>.png`` and a captions.jsonl naming each caption of each."""
    rows = []
    for level, texts in captions.items():
        solid(folder / sub / f"{level}.png", level)
        rows += [{"image": f"{sub}{level}.png", "caption": text} for text in texts]
    write_jsonl(folder, rows)
    return folder


def config(path: Path, **changes) -> CaptionFolderConfig:
    return CaptionFolderConfig(path=str(path), **{"batch_size": 2, "image_size": SIZE, "num_threads": 0, **changes})


def levels(batch: dict) -> list[int]:
    """The gray level of each image of a batch (normalized with mean = std = 0.5)."""
    return (batch["image"][:, 0, 0, 0] * 127.5 + 127.5).round().to(torch.int64).tolist()


def texts(batch: dict, tokenizer) -> list[tuple[str, str]]:
    """Each row's ``(input, target)`` decoded, padding left out."""
    rows = []
    for inputs, targets in zip(batch["input"], batch["target"]):
        real = targets != IGNORE_INDEX
        rows.append((tokenizer.decode(inputs[real]), tokenizer.decode(targets[real])))
    return rows


def val_examples(ds) -> list[tuple[int, str]]:
    """Every (gray level, caption) of an EvalBatches, in order."""
    return [
        (level, target.removesuffix("\n"))
        for batch in ds
        for level, (_, target) in zip(levels(batch), texts(batch, ds.tokenizer))
    ]


def same(a: list[dict], b: list[dict]) -> bool:
    keys = ("image", "input", "target")
    return len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in keys)


def take(ds, n: int) -> list[dict]:
    return [next(ds) for _ in range(n)]


def test_registered():
    assert DATASETS["caption_folder"] is CaptionFolderConfig
    assert DATASETS["shape_captions"] is ShapeCaptionsConfig


# -- batches ---------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["word", "char"])
def test_batches_hold_each_image_with_its_caption_shifted_and_padded(tmp_path, tokenizer):
    folder = captioned_folder(tmp_path / "caps")
    ds = config(folder, val_fraction=0, tokenizer=tokenizer).build("train", seed=0)
    tok = ds.tokenizer
    longest = max(len(tok.encode(c)) for cs in CAPTIONS.values() for c in cs)
    assert ds.block_size == longest + 1 and ds.vocab_size == tok.vocab_size
    assert "\n" in tok.decode(range(tok.vocab_size))
    assert ds.classes == [] and len(ds.examples) == 7
    seen = []
    for batch in take(ds, 3):  # one epoch: 7 examples, batches of 2
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, SIZE, SIZE)
        for key in ("input", "target"):
            assert batch[key].dtype == torch.int64 and batch[key].shape == (2, ds.block_size)
        for row, (level, (inputs, targets)) in enumerate(zip(levels(batch), texts(batch, tok))):
            caption = targets.removesuffix("\n")
            assert caption in CAPTIONS[level] and inputs == "\n" + caption
            n = len(tok.encode(caption)) + 1  # pairs of [B] + caption + [B]
            assert (batch["input"][row, n:] == 0).all() and (batch["target"][row, n:] == IGNORE_INDEX).all()
            assert (batch["target"][row, :n] != IGNORE_INDEX).all()
            assert torch.equal(batch["input"][row, 1:n], batch["target"][row, : n - 1])  # target is input shifted
            seen.append((level, caption))
    assert len(set(seen)) == 6  # the epoch drops one of the 7 examples


def test_max_length_pads_further_or_refuses_a_caption_that_does_not_fit(tmp_path):
    folder = captioned_folder(tmp_path / "caps")
    ds = config(folder, max_length=20).build("val", seed=0)
    assert ds.block_size == 20 and next(iter(ds))["input"].shape[1] == 20
    longest = len("a much longer caption than the others here".split())  # 8 words
    message = rf"longest caption has {longest} tokens.*max_length must be >= {longest + 1}"
    with pytest.raises(ValueError, match=message) as info:
        config(folder, max_length=longest).build("train", seed=0)
    assert "\n" not in str(info.value)
    assert config(folder, max_length=longest + 1).build("train", seed=0).block_size == longest + 1


def test_tsv_captions_with_subfolders_and_several_lines_per_image(tmp_path):
    solid(tmp_path / "a" / "one.png", 20)
    solid(tmp_path / "b" / "c" / "two.jpg", 200)
    (tmp_path / "captions.tsv").write_text(
        "a/one.png\ta first image\r\n\nb/c/two.jpg\t  the second  \na/one.png\tagain the first\n", encoding="utf-8"
    )
    found = read_captions(tmp_path / "captions.tsv")
    assert found.captions == ["a first image", "the second", "again the first"]
    assert [Path(f).name for f in found.files] == ["one.png", "two.jpg", "one.png"]
    ds = config(tmp_path, val_path=str(tmp_path)).build("val", seed=0)
    examples = val_examples(ds)
    assert [c for _, c in examples] == found.captions
    assert examples[0][0] == examples[2][0] == 20 and abs(examples[1][0] - 200) <= 3  # JPEG is lossy


def test_captions_file_named_in_the_config(tmp_path):
    captioned_folder(tmp_path)
    (tmp_path / "captions.jsonl").rename(tmp_path / "mine.jsonl")
    ds = config(tmp_path, captions="mine.jsonl", val_fraction=0).build("train", seed=0)
    assert len(ds.examples) == 7
    with pytest.raises(ValueError, match=r"no captions.jsonl or captions.tsv in .*data.captions"):
        config(tmp_path).build("train", seed=0)


# -- captions file errors --------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"image": "10.png", "caption": "ok"}', "{not json"], r"line 2: not JSON"),
        (['{"image": "10.png"}'], r"line 1: no 'caption' key"),
        (['["10.png", "x"]'], r"line 1: no 'image' or 'caption' key"),
        (['{"image": "10.png", "caption": 3}'], r"line 1: .* must be strings"),
        (['{"image": "10.png", "caption": "  "}'], r"line 1: the caption of 10.png is empty"),
        (['', '{"image": "10.png", "caption": "two\\nlines"}'], r"line 2: the caption holds a newline or a tab"),
        (['{"image": "10.png", "caption": "a\\tb"}'], r"line 1: the caption holds a newline or a tab"),
        (['{"image": "", "caption": "a"}'], r"line 1: the image file name is empty"),
        (["", "  "], r"has no captions"),
    ],
)
def test_jsonl_errors_name_the_file_and_line_in_one_line(tmp_path, lines, match):
    solid(tmp_path / "10.png", 10)
    path = write_jsonl(tmp_path, lines)
    with pytest.raises(ValueError, match=match) as info:
        read_captions(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("10.png\tfine\n10.png has no tab\n", r"line 2: no tab"),
        ("10.png\tone\ttwo\n", r"line 1: the caption holds a newline or a tab"),
        (b"10.png\t\xff\n", r"not UTF-8"),
    ],
)
def test_tsv_errors_name_the_file_and_line_in_one_line(tmp_path, text, match):
    solid(tmp_path / "10.png", 10)
    path = tmp_path / "captions.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match) as info:
        read_captions(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_images_are_counted_with_the_first_example(tmp_path):
    solid(tmp_path / "10.png", 10)
    rows = [{"image": "10.png", "caption": "here"}, {"image": "gone.png", "caption": "a"}]
    path = write_jsonl(tmp_path, rows + [{"image": "sub/also.png", "caption": "b"}])
    message = r"2 captioned images not found, e.g. line 2: .*gone.png; .*relative to"
    with pytest.raises(ValueError, match=message) as info:
        read_captions(path)
    assert "\n" not in str(info.value)


def test_captions_are_read_composed_and_file_names_match_in_either_unicode_form(tmp_path):
    """A decomposed "café" (as macOS writes it) was another word than the composed one, and a captions file naming
    café0.png composed did not find the file written decomposed: "captioned images not found"."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    solid(tmp_path / f"{decomposed}0.png", 10)
    solid(tmp_path / f"{composed}1.png", 40)
    rows = [{"image": f"{composed}0.png", "caption": f"a {decomposed} here"},
            {"image": f"{decomposed}1.png", "caption": f"a {composed} there"}]
    found = read_captions(write_jsonl(tmp_path, rows))
    assert found.captions == [f"a {composed} here", f"a {composed} there"]
    assert [Path(f).is_file() for f in found.files] == [True, True]


def test_images_without_captions_are_left_out_with_one_warning(tmp_path):
    folder = captioned_folder(tmp_path / "train", {10: ["a"], 40: ["b"]})
    solid(folder / "77.png", 77)
    solid(folder / "sub" / "88.png", 88)
    captioned_folder(tmp_path / "val", {70: ["c"]})
    message = r"2 images in .* have no caption in captions.jsonl and are left out, e.g."
    with pytest.warns(UserWarning, match=message) as info:
        ds = config(tmp_path).build("train", seed=0)
    assert len(info) == 1 and "\n" not in str(info[0].message)
    assert sorted(int(Path(f).stem) for f, _ in ds.examples) == [10, 40]


def test_unknown_options_and_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"data.path .* is not a folder"):
        config(tmp_path / "nowhere").build("train", seed=0)
    captioned_folder(tmp_path)
    with pytest.raises(ValueError, match=r"data.val_path .* is not a folder"):
        config(tmp_path, val_path=str(tmp_path / "nowhere")).build("train", seed=0)
    with pytest.raises(ValueError, match="must be one of 'word', 'char'"):
        config(tmp_path, tokenizer="bpe")


# -- splits ----------------------------------------------------------------


def test_val_fraction_splits_by_image_disjoint_and_fixed_by_data_seed(tmp_path):
    captions = {level: [f"caption {k} of {level}" for k in range(1 + level % 3)] for level in range(10, 250, 10)}
    folder = captioned_folder(tmp_path, captions)
    everything = {(level, c) for level, cs in captions.items() for c in cs}

    def split(**changes) -> tuple[set, set]:
        train = config(folder, val_fraction=0.25, **changes).build("train", seed=0)
        val = config(folder, val_fraction=0.25, **changes).build("val", seed=0)
        train_examples = {(int(Path(f).stem), c) for f, c in train.examples}
        return train_examples, set(val_examples(val))

    train, val = split()
    assert train | val == everything and not train & val
    assert not {level for level, _ in train} & {level for level, _ in val}  # no image in both
    assert len({level for level, _ in val}) == round(0.25 * len(captions))
    assert split() == (train, val) and split(data_seed=1) != (train, val)
    with pytest.raises(ValueError, match="val split .* is empty"):
        config(folder, val_fraction=0).build("val", seed=0)


def test_train_and_val_subfolders_when_path_has_no_captions_file(tmp_path):
    captioned_folder(tmp_path / "train", {10: ["train one"], 40: ["train two"]})
    captioned_folder(tmp_path / "val", {70: ["val words"]})
    ds = config(tmp_path).build("val", seed=0)
    assert val_examples(ds) == [(70, "val words")]
    assert set(ds.tokenizer.words) == {"\n", "train", "one", "two", "val", "words"}  # train and val's words


def test_a_val_folder_with_its_own_captions_is_the_val_split_beside_a_top_captions_file(tmp_path):
    """path/captions.jsonl silently replaced path/val/captions.jsonl: 10% of train was held out instead, and the
    val images were said to "have no caption"."""
    captioned_folder(tmp_path, {10: ["train one"], 40: ["train two"], 70: ["train three"]})
    captioned_folder(tmp_path / "val", {100: ["val words"], 130: ["more val"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the val images are captioned: nothing to warn of
        train, val = (config(tmp_path).build(split, seed=0) for split in ("train", "val"))
    assert sorted(int(Path(f).stem) for f, _ in train.examples) == [10, 40, 70]
    assert sorted(val_examples(val)) == [(100, "val words"), (130, "more val")]
    assert val.summary == f"2 captions of 2 images in {tmp_path / 'val' / 'captions.jsonl'}"
    assert train.summary == f"3 captions of 3 images in {tmp_path / 'captions.jsonl'}"
    write_jsonl(tmp_path, [{"image": "10.png", "caption": "a"}, {"image": "val/100.png", "caption": "b"}])
    with pytest.raises(ValueError, match=r"line 2: .*100.png; .* has a captions file of its own and is the val split"):
        config(tmp_path).build("train", seed=0)


def test_evaluating_a_folder_as_both_splits_says_it_read_all_of_it(tmp_path):
    """--data.path=TEST --data.val_path=TEST said "0.1 of its images held out" though all were evaluated."""
    folder = captioned_folder(tmp_path)
    said = config(folder, val_path=str(folder)).build("val", seed=0).summary
    assert said == f"7 captions of 6 images in {folder / 'captions.jsonl'}"


def test_val_path_beside_a_prepared_folder_trains_from_its_train_folder(tmp_path):
    """As an image folder does: path/train stayed unread and "no captions.jsonl in path" was the error."""
    captioned_folder(tmp_path / "data" / "train", {10: ["train one"], 40: ["train two"]})
    captioned_folder(tmp_path / "data" / "val", {40: ["not read"]})
    captioned_folder(tmp_path / "test", {70: ["test words"]})
    train = config(tmp_path / "data", val_path=str(tmp_path / "test")).build("train", seed=0)
    assert sorted(int(Path(f).stem) for f, _ in train.examples) == [10, 40]


def test_each_split_says_what_it_read_as_an_image_folder_does(tmp_path):
    """A caption folder said nothing of what it read (craft evaluate --data.val_path=... printed only metrics)."""
    folder = captioned_folder(tmp_path / "one")
    said = [config(folder, val_fraction=0.5).build(split, seed=0).summary for split in ("train", "val")]
    assert said[0].startswith("4 captions of 3 images in ") and said[0].endswith("captions.jsonl less the images held out for val")
    assert said[1].endswith("captions.jsonl, 0.5 of its images held out by data_seed = 0")
    captioned_folder(tmp_path / "two" / "train", {10: ["train one"], 40: ["train two"]})
    captioned_folder(tmp_path / "two" / "val", {70: ["val words"]})
    val = config(tmp_path / "two").build("val", seed=0).summary
    assert val == f"1 caption of 1 image in {tmp_path / 'two' / 'val' / 'captions.jsonl'}"


# -- position, threads, load_image ------------------------------------------


@pytest.mark.parametrize("changes", [{}, {"num_threads": 2, "prefetch": 3, "cache": True}])
def test_resume_is_exact_and_threads_do_not_change_the_batches(tmp_path, changes):
    folder = captioned_folder(tmp_path)
    reference = take(config(folder, val_fraction=0).build("train", seed=3), 8)
    ds = config(folder, val_fraction=0, **changes).build("train", seed=3)
    take(ds, 4)
    state = ds.state_dict()
    again = config(folder, val_fraction=0, **changes).build("train", seed=3)
    again.load_state_dict(state)
    assert same(take(again, 4), reference[4:])
    ds.close(), again.close()


def test_load_image_equals_the_batch_image_of_the_same_file(tmp_path):
    image = Image.effect_mandelbrot((10, 10), (-2, -1.5, 1, 1.5), 100).convert("RGB")  # resized: 10 -> 6
    image.save(tmp_path / "m.png")
    write_jsonl(tmp_path, [{"image": "m.png", "caption": "a fractal"}])
    cfg = config(tmp_path, val_path=str(tmp_path), mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])
    batch = next(iter(cfg.build("val", seed=0)))
    loaded = cfg.load_image(tmp_path / "m.png")
    assert loaded.dtype == torch.float32 and loaded.shape == (3, SIZE, SIZE)
    assert torch.equal(loaded, batch["image"][0])
    assert cfg.load_image(tmp_path / "m.png").shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="no such image file"):
        cfg.load_image(tmp_path / "missing.png")


# -- config ----------------------------------------------------------------

EXPERIMENT = 'name = "cap"\n[model]\nkind = "cnn"\n[data]\n'


@pytest.mark.parametrize("cls", [CaptionFolderConfig, ShapeCaptionsConfig])
def test_config_fields_are_plain_toml_types(cls):
    allowed = {bool, int, float, str, list[str], list[float], str | None, int | None, Literal["word", "char"]}
    types = attrs.resolve_types(cls)
    assert {f.name: f.type for f in attrs.fields(types) if f.type not in allowed} == {}


def test_config_round_trip_and_errors():
    exp = loads(EXPERIMENT + 'kind = "caption_folder"\npath = "data/caps"\ntokenizer = "char"\nmax_length = 40\n')
    assert exp.data.config == CaptionFolderConfig(path="data/caps", tokenizer="char", max_length=40)
    assert loads(dumps(exp)) == exp
    exp = loads(EXPERIMENT + 'kind = "shape_captions"\nshapes = ["star", "ring"]\nmax_things = 1\n')
    assert loads(dumps(exp)) == exp
    with pytest.raises(ConfigError) as info:
        loads(EXPERIMENT + 'kind = "shape_captions"\ncolours = ["teal"]\nmax_things = 3\n')
    problems = "\n".join(info.value.problems)
    assert "data.colours" in problems and "teal" in problems and "data.max_things" in problems
    with pytest.raises(ConfigError, match="data.tokenizer"):
        loads(EXPERIMENT + 'kind = "caption_folder"\npath = "x"\ntokenizer = "bpe"\n')


# -- synthetic scenes ------------------------------------------------------

SCENES = dict(num_train=24, num_val=10, image_size=16, batch_size=4)


def test_shape_captions_batches_decode_to_the_scene_captions():
    cfg = ShapeCaptionsConfig(**SCENES)
    ds = cfg.build("val", seed=0)
    assert ds.block_size == max(len(c.split()) for c in cfg.captions("train") + cfg.captions("val")) + 1
    expected = [scenes.describe_scene(i, seed=0, split="val").caption for i in range(10)]
    batches = list(ds)
    assert [t.removesuffix("\n") for b in batches for _, t in texts(b, ds.tokenizer)] == expected
    batch = batches[0]
    assert batch["image"].shape == (4, 3, 16, 16) and batch["input"].shape == (4, ds.block_size)
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1


def test_shape_captions_are_deterministic_and_fixed_by_data_seed():
    a = take(ShapeCaptionsConfig(**SCENES).build("train", seed=1), 7)
    b = take(ShapeCaptionsConfig(**SCENES).build("train", seed=1), 7)
    assert same(a, b)
    other = ShapeCaptionsConfig(**SCENES, data_seed=1)
    assert other.captions("train") != ShapeCaptionsConfig(**SCENES).captions("train")
    ds = ShapeCaptionsConfig(**SCENES).build("train", seed=1)
    take(ds, 3)
    again = ShapeCaptionsConfig(**SCENES).build("train", seed=1)
    again.load_state_dict(ds.state_dict())
    assert same(take(again, 4), a[3:])


@pytest.mark.parametrize("tokenizer", ["word", "char"])
def test_vocabulary_is_the_grammar_whatever_the_scenes(tokenizer):
    full = ShapeCaptionsConfig(**SCENES, tokenizer=tokenizer).build("val", seed=0).tokenizer
    narrow = ShapeCaptionsConfig(
        **SCENES, tokenizer=tokenizer, shapes=["star"], colours=["red", "blue"], max_things=1, data_seed=5
    )
    assert narrow.build("val", seed=0).tokenizer == full
    if tokenizer == "word":
        assert full == WordTokenizer(sorted({*scenes.WORDS, "\n"}))
    captions = narrow.captions("train") + narrow.captions("val")
    assert all(" at the " in c and " star " in c for c in captions)
    assert {c.split()[2] for c in captions} <= {"red", "blue"}


def test_write_caption_folder_reads_back_as_the_same_examples(tmp_path):
    root = write_caption_folder(tmp_path / "scenes", num_train=6, num_val=5, image_size=16, seed=2)
    assert sorted(p.name for p in (root / "val").iterdir()) == [*(f"{i}.png" for i in range(5)), "captions.jsonl"]
    synthetic = ShapeCaptionsConfig(num_train=6, num_val=5, image_size=16, batch_size=2, data_seed=2)
    written = config(root, image_size=16)
    for split in ("train", "val"):
        assert read_captions(root / split / "captions.jsonl").captions == list(synthetic.captions(split))
    a_ds, b_ds = synthetic.build("val", seed=0), written.build("val", seed=0)
    a, b = list(a_ds), list(b_ds)
    assert [texts(x, a_ds.tokenizer) for x in a] == [texts(x, b_ds.tokenizer) for x in b]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))  # PNG is lossless
    assert torch.equal(synthetic.load_image(root / "val" / "1.png"), a[0]["image"][1])
    with pytest.raises(FileExistsError, match="not empty"):
        write_caption_folder(root, num_train=1, num_val=1)


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from craft.data import captions as captions_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(captions_module, "render_scene", boom)
    with pytest.raises(KeyboardInterrupt):
        write_caption_folder(tmp_path / "scenes", num_train=3, num_val=2)
    assert list(tmp_path.iterdir()) == []


def test_no_warnings_from_a_clean_folder(tmp_path):
    folder = captioned_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config(folder).build("train", seed=0)


def test_craft_prepare_captions_writes_a_caption_folder(tmp_path, capsys):
    from craft import cli

    cli.prepare("captions", str(tmp_path / "caps"), image_size=8, num_train=4, num_val=2)
    assert capsys.readouterr().out.strip() == str(tmp_path / "caps")
    ds = config(tmp_path / "caps", image_size=8).build("val", seed=0)
    assert len(val_examples(ds)) == 2
    with pytest.raises(cli.UsageError) as error:  # every option listed (--image_size, --seed too), the closest named
        cli.parse_command_line(["prepare", "captions", str(tmp_path / "other"), "--num_trian=4"])
    assert str(error.value) == (
        "craft prepare captions: unknown option --num_trian (did you mean 'num_train'?); "
        "options: --num_train, --num_val, --image_size, --seed"
    )


def test_messages_name_what_was_found_and_the_whole_fix(tmp_path):
    """A captions.csv went unnamed, a TSV header was "1 captioned image not found", HF's file_name/text keys were
    "no 'image' or 'caption' key" without the keys seen, and a captioned notes.txt was to be "deleted", which then
    failed as a missing image: the fix is to remove its line."""
    solid(tmp_path / "csv" / "10.png", 10)
    (tmp_path / "csv" / "captions.csv").write_text("file,caption\n10.png,a dark one\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no captions.jsonl or captions.tsv in .*csv, but captions.csv: a captions "
                                         r"file is JSONL or TSV, not .csv; convert it to captions.tsv"):
        config(tmp_path / "csv").build("train", seed=0)
    write_jsonl(tmp_path / "csv", [{"image": "10.png", "caption": "x"}], name="metadata.jsonl")
    with pytest.raises(ValueError, match=r", but metadata.jsonl: name it with data.captions = \"metadata.jsonl\""):
        config(tmp_path / "csv").build("train", seed=0)
    solid(tmp_path / "tsv" / "40.png", 40)
    (tmp_path / "tsv" / "captions.tsv").write_text("file\tcaption\n40.png\ta gray one\n", encoding="utf-8")
    assert read_captions(tmp_path / "tsv" / "captions.tsv").captions == ["a gray one"]
    hf = write_jsonl(tmp_path / "hf", [{"file_name": "10.png", "text": "a dark one"}])
    solid(tmp_path / "hf" / "10.png", 10)
    with pytest.raises(ValueError, match=r"line 1: no 'caption' key \(its keys are 'file_name', 'text'\)"):
        read_captions(hf)
    write_jsonl(tmp_path / "hf", [{"file_name": "10.png", "caption": "a dark one"}])
    assert read_captions(hf).files == [str(tmp_path / "hf" / "10.png")]
    (tmp_path / "hf" / "notes.txt").write_text("not an image", encoding="utf-8")
    write_jsonl(tmp_path / "hf", [{"image": "10.png", "caption": "a"}, {"image": "notes.txt", "caption": "b"}])
    with pytest.raises(ValueError, match=r"1 captioned file is not an image \(.*\), e.g. line 2: .*notes.txt; "
                                         r"remove those lines from captions.jsonl"):
        read_captions(hf)
    (tmp_path / "hf" / "10.png").write_bytes(b"damaged")
    write_jsonl(tmp_path / "hf", [{"image": "10.png", "caption": "a"}] * 2)
    with pytest.raises(ValueError, match=r"replace or delete it; if you delete it, remove its lines from the captions file too$"):
        list(config(tmp_path / "hf", val_path=str(tmp_path / "hf")).build("val", seed=0))
