"""The commands of the command line, each a plain function whose parameters are its words and options
(``craft.commandline`` reads them; ``craft.cli`` is the table). Imports are lazy: ``craft --help`` and
``craft info`` stay fast."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

import craft
from craft.commandline import UsageError
from craft.describe import describe
from craft.distributed import is_main_process


def train(
    config: str, *, resume: bool = False, overwrite: bool = False, checkpoint: str | None = None, print_config: bool = False,
    **overrides: str,
) -> None:
    """Train the experiment in the TOML file CONFIG.

    Any --section.key=value overrides a key of the file (values are TOML
    literals: --train.compile=false, --optim.lr=3e-4, --model.widths=[8,16];
    a text key takes the text as typed: --name=2024; None leaves out an
    optional table or key: --train.sample=None; --schedule.kind=constant leaves
    out the file's keys only its old kind takes, with a warning). --resume
    continues the run folder from its last checkpoint, as the run's own config.toml says,
    with only the overrides given now on top (CONFIG may be the run folder:
    craft train runs/NAME --resume); --checkpoint=NAME with it continues from
    that checkpoint instead (best, or a file in RUN/checkpoints: back to before
    a loss spike), setting the newer ones aside (renamed *.rolled-back, never
    deleted); --overwrite replaces the run. Without either,
    a name already taken gets a folder of its own (NAME-2, NAME-3, ...).
    --print_config prints the resolved experiment (every default filled in,
    the schedule's length too) and exits; a run writes it to its folder's
    config.toml, with the model keys it takes from the data (a comment in
    the printed [model] names each) filled in.
    """
    from craft import run
    from craft.config import load
    from craft.logging import check_tensorboard
    from craft.rundir import resume_target

    if resume and overwrite:
        raise UsageError("choose one of --resume (continue the run) and --overwrite (replace it)")
    if checkpoint is not None and not resume:
        raise UsageError(f"--checkpoint={checkpoint} picks the checkpoint --resume continues from: add --resume "
                         f"(a new run from a checkpoint's weights: --train.init_from=FILE)")
    if Path(config).suffix.lower() != ".toml" and not Path(config).is_dir():
        if resume:
            raise UsageError(f"no run folder {config!r} to resume; give the run folder (runs/NAME) or the experiment's .toml")
        raise UsageError(
            f"craft reads TOML experiments: {config!r} is not a .toml file; "
            "write the experiment as TOML (see experiments/*.toml)"
        )
    if Path(config).is_dir() and not resume:
        raise UsageError(f"{config!r} is a folder: add --resume to continue the run there, or give the experiment's .toml")
    # --resume continues the run as it was, with only this command line's overrides on top.
    exp = resume_target(config, overrides, say=lambda line: print(line, file=sys.stderr)) if resume else load(config, texts=overrides)
    if print_config:
        from craft.init_from import source

        source(exp.train, Path(exp.out_dir) / exp.name, resume)  # a mistyped init_from is said here too
        text, notes = printed_config(exp)
        for note in notes:  # what the run would say about the schedule, where the TOML on stdout stays clean
            print(note, file=sys.stderr)
        print(text, end="")
        return
    if exp.train.tensorboard:
        check_tensorboard()  # before the run folder is touched
    if checkpoint not in (None, "latest") and exp.sweep is not None:
        raise UsageError(f"--checkpoint={checkpoint}: a sweep resumes from its newest checkpoint only; leave --checkpoint out")
    run_dir = run.train(exp, resume=checkpoint if checkpoint not in (None, "latest") else resume, overwrite=overwrite)
    if is_main_process():  # under torchrun, one line for the whole job
        print(f"run folder: {run_dir}")


def printed_config(exp) -> tuple[str, list[str]]:
    """``(toml, notes)``: ``exp`` as the run resolves it before reading its data (``schedule.total_steps``, a
    warmup cut to fit: ``craft.parts.fit_schedule``, whose ``notes`` say so), with a comment in ``[model]``
    for each key the run takes from the data at its start (``craft.checks.FROM_DATA``). Building the data
    here could mean writing it (``prepare = "shapes"``) or reading a corpus whole, so those keys stay unset."""
    import attrs

    from craft.checks import FROM_DATA
    from craft.config import dumps
    from craft.parts import fit_schedule

    exp, notes = fit_schedule(exp)
    config = exp.model.config
    fields = attrs.fields_dict(type(config)) if attrs.has(type(config)) else {}
    comments = [
        f"# {key}: not set; the run takes it from the data ({FROM_DATA[key]}) at its start, and its config.toml records it"
        for key in FROM_DATA if key in fields and getattr(config, key) is None
    ]
    return in_section(dumps(exp), "model", comments), notes


def in_section(text: str, section: str, lines: list[str]) -> str:
    """TOML ``text`` with ``lines`` (comments) after the last key of its ``[section]`` table."""
    rows = text.splitlines()
    if not lines or f"[{section}]" not in rows:
        return text
    start = rows.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(rows)) if rows[i].startswith("[")), len(rows))
    while end > start + 1 and not rows[end - 1].strip():
        end -= 1
    return "\n".join(rows[:end] + lines + rows[end:]) + "\n"


def evaluate(run_dir: str, *, checkpoint: str = "latest", whole_split: bool = False, **data: str) -> None:
    """Re-evaluate RUN_DIR's checkpoint on its validation split.

    --checkpoint: latest, best, or a file: a name in RUN_DIR/checkpoints
    (step_00000200.pt) or a path, from the current folder or from RUN_DIR
    (the same for generate and export).

    The split is read as the run read it: with train.eval_batches, those
    batches (spread over the split), with a token folder's data.val_windows,
    those windows, so the figures equal the run's last logged ones (stderr
    then says how much was read); --whole_split reads all of it.

    [data] options evaluate on other data (a test set), read as the run read
    its own: craft evaluate runs/NAME --data.val_path=data/test (image and
    caption folders: only data/test is read, its labels and words renumbered to
    the run's classes.json and tokenizer.json), or --data.path=FILE for text made
    of the run's characters (or words), read with the run's tokenizer.json.
    Stderr says what was read.
    """
    from craft import trained

    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    metrics = trained.evaluate(Path(run_dir), checkpoint, data or None, whole_split=whole_split, say=say)
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


def generate(
    run_dir: str,
    *,
    prompt: str | None = None,
    prompt_file: str | None = None,
    max_new_tokens: int = 300,
    num_samples: int = 1,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop: str | None = None,
    checkpoint: str = "latest",
    cache: bool = True,
    image: str | None = None,
) -> None:
    """Print PROMPT and its continuation sampled from RUN_DIR's model; with --image=PATH, the image's caption.

    The text is printed as it is generated; Ctrl-C stops it and keeps what
    was printed. --temperature=0 is greedy (the default for captions; 0.8 for
    text; a tiny one such as 1e-45 samples among the tied likeliest tokens,
    i.e. is greedy too); --top_k keeps the K likeliest tokens, --top_p the smallest set
    whose probability reaches P. The same --seed gives the same text;
    --num_samples=N prints N samples (seeds SEED, SEED+1, ...) separated by a
    blank line. --stop=TEXT ends a sample before TEXT. --cache=false recomputes the whole context for every
    token (slower, same tokens). --prompt_file=PATH reads the prompt from a UTF-8 file, exactly. A
    caption ends at its end marker; --prompt then gives its first words.
    """
    import attrs

    from craft import trained
    from craft.config import ConfigError, Sample, structure
    from craft.data.tokenizers import BOUNDARY

    prompt = prompt if prompt_file is None else read_prompt(prompt_file, prompt)
    if image is not None:  # the prompt of a caption is the begin marker, then its first words if given
        prompt, temperature = BOUNDARY + (prompt or ""), 0.0 if temperature is None else temperature
        if stop is not None:
            raise UsageError("--stop: a caption stops at its end marker; drop --stop")
    if num_samples < 1:
        raise UsageError(f"--num_samples: must be >= 1, got {num_samples}")
    if stop == "":
        raise UsageError("--stop: empty; give the text to end a sample before, or leave --stop out")
    given = dict(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    try:
        options = structure({k: v for k, v in given.items() if v is not None}, Sample)
        samples = [attrs.evolve(options, seed=options.seed + i) for i in range(num_samples)]
    except (ConfigError, ValueError) as e:
        problems = e.problems if isinstance(e, ConfigError) else [f"seed: {e}"]
        raise UsageError("\n".join(f"--{line}" for line in problems)) from None
    for i, sample in enumerate(samples):
        if i:
            print(flush=True)  # a blank line between samples
        if image is not None:
            print(trained.sample_run(Path(run_dir), sample, checkpoint_name=checkpoint, use_cache=cache, image=image))
            continue
        echo = Echo(sample.prompt)
        trained.sample_run(Path(run_dir), sample, checkpoint_name=checkpoint, stop=stop, use_cache=cache, on_text=echo)
        echo("")  # the prompt, if no token came
        print(flush=True)


def read_prompt(path: str, prompt: str | None = None) -> str:
    """The UTF-8 text of ``path`` as it is (a byte-order mark dropped); a UsageError naming the fix when unreadable
    or when ``prompt`` is given too."""
    if prompt is not None:
        raise UsageError("--prompt and --prompt_file: give one of them")
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"--prompt_file {path}: cannot read it ({e.strerror or e}); give a text file") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise UsageError(f"--prompt_file {path}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "convert it to UTF-8") from None


class Echo:
    """Prints ``prefix`` with the first piece of text, then each piece as it comes (flushed)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, piece: str) -> None:
        print(self.prefix + piece, end="", flush=True)
        self.prefix = ""


def export(run_dir: str, out: str, *, checkpoint: str = "latest") -> None:
    """Write RUN_DIR's weights as OUT/model.safetensors and its model config as OUT/config.json.

    OUT must be a new or empty folder: export never overwrites a file. OUT
    also gets what the run's model needs to be used elsewhere: a text run's
    tokenizer.json; a classifier's classes.json (its class names, in the
    order of its outputs); an image model's preprocessing.json (the steps
    from an image file to its input: EXIF orientation, mode, resize, centre
    crop, scale, mean and std). The weights load into the plain nn.Module
    with load_state_dict(strict=True) (tied weights under both names).
    In Python, craft.load_model(RUN_DIR) returns the trained module directly.
    """
    from craft import trained

    print(trained.export(Path(run_dir), Path(out), checkpoint))


def plot(run_dir: str) -> None:
    """Redraw RUN_DIR/loss.png from its metrics.jsonl."""
    from craft import trained

    print(trained.plot(Path(run_dir)))


def info(name: str | None = None) -> str:
    """Versions, devices and the registered components; with NAME, that entry's table and options."""
    from craft.config import registries
    from craft.config.records import TABLES

    if name is not None:
        return describe(name)
    cuda = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
    lines = [
        f"craft {craft.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"devices: cpu ({torch.get_num_threads()} threads), {cuda}",
    ]
    lines += [f"{section}: {', '.join(sorted(table))}" for section, table in registries().items()]
    lines.append(f"tables: {', '.join(TABLES)} (craft info NAME lists an entry's or a table's keys)")
    return "\n".join(lines)
