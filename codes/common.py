"""Command-line plumbing shared by the lessons. Nothing about diffusion lives here.

Each top-level `name = value  # help` line of a lesson becomes a flag `--name`; `parse_config` adds
`--seed`, `--device` and `--out`, checks the values, seeds the generators, picks the device and
creates the output folder. Bad input ends the run with one line on stderr, never a traceback."""
import ast
import math
import re
import shutil
import sys
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from pathlib import Path

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import torch


def fail(message):
    sys.exit(f"error: {message}")  # one line on stderr, exit code 1


def check(condition, message):
    if not condition:
        fail(message)


def hyperparameters(path):
    """{name: (default, help)} for each top-level `name = literal  # help` line of the file `path`;
    UPPER_CASE names of two letters or more (MODES) are constants, not flags. Any other top-level
    assignment, or one without a literal or a help comment, stops the run, naming file and line."""
    source = Path(path).read_text()
    lines, found, tree = source.splitlines(), {}, ast.parse(source)
    bound = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    bound |= {alias.asname or alias.name for node in tree.body
              if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    for node in tree.body:
        where = f"{Path(path).name}, line {node.lineno}"
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            continue  # only an assignment can be a hyperparameter
        check(isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name],
              f"{where}: write it as its own `name = value  # help` line, to be a flag")
        name = node.targets[0].id
        if (name.isupper() and len(name) > 1) or name.startswith("_"):
            continue  # a constant of the lesson (MODES) or a private name
        check(name not in bound, f"{where}: the hyperparameter {name} hides the import or function "
              "of the same name; rename one of them")
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError):  # TypeError: an unhashable key, as in {[1]: 2}
            fail(f"{where}: the hyperparameter {name} must be a plain value (a number, a string, "
                 "a tuple), not an expression, to be a flag")
        help_text = lines[node.end_lineno - 1][node.end_col_offset:].partition("#")[2].strip()
        check(help_text, f"{where}: the hyperparameter {name} needs a `# help` comment")
        found[name] = (value, help_text)
    return found


def number(kind, valid, words):
    """An argparse type: `kind(text)` if `valid` holds, else argparse's error naming `words`."""
    def convert(text):
        value = kind(text)
        if not valid(value):
            raise ValueError
        return value
    convert.__name__ = words  # the words of argparse's error message
    return convert


POSITIVE_INT = number(int, lambda value: value >= 1, "positive integer")
FINITE_FLOAT = number(float, math.isfinite, "finite number")


def pick_device(name):
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    check(available[name], f"--device {name} is not available on this machine (try --device auto)")
    return torch.device(name)


def parse_config(doc, *files, argv=None, presets=None):
    """The command line's values of the hyperparameters of `files` (a later file overrides an
    earlier one). presets = {flag: {value: {name: default}}}: when --flag takes that value, those
    defaults replace the file's, not the flags given (how `--method tutorial` sets the blog's)."""
    parser = ArgumentParser(description=doc, formatter_class=RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(f"{message} (see -h)")  # not argparse's usage + error
    constants = {name: entry for path in files for name, entry in hyperparameters(path).items()}
    for name, (default, help_text) in constants.items():
        help_text = help_text.replace("%", "%%")  # argparse %-formats help: a bare % crashes -h
        if isinstance(default, bool):  # a switch: `--name` alone turns it on
            parser.add_argument(f"--{name}", action="store_true", default=default, help=help_text)
            continue
        kind = {int: POSITIVE_INT, float: FINITE_FLOAT, tuple: FINITE_FLOAT}.get(type(default), str)
        listed = re.match(r"(\w+(?:\|\w+)+):", help_text) if kind is str else None  # `a|b:` choices
        nargs = "+" if isinstance(default, tuple) else None  # a lesson checks a fixed length
        choices = listed.group(1).split("|") if listed else None
        parser.add_argument(f"--{name}", type=kind, nargs=nargs, default=default, choices=choices,
                            help=f"{help_text} (default: {default})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks cuda, then mps, then cpu (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("outputs") / Path(files[-1]).stem,
                        help="folder for figures and .npy results (default: outputs/<script name>)")
    for flag, values in (presets or {}).items():
        chosen = getattr(parser.parse_known_args(argv)[0], flag)
        parser.set_defaults(**values.get(chosen, {}))
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if name == "lr" or name.startswith("sigma_"):
            check(value > 0, f"--{name} must be positive, got {value}")
        if name == "ema_decay":  # an EMA's decay weighs the old average against the new weights
            check(0 <= value < 1, f"--ema_decay must lie in [0, 1), got {value}")
        if isinstance(value, list):  # a tuple-valued flag stays a tuple
            setattr(args, name, tuple(value))
    args.device = pick_device(args.device)
    args.out = writable_folder(args.out, "--out")
    if getattr(args, "assets", ""):  # fail now, not after the training, if it is read-only
        writable_folder(args.assets, "--assets")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    return args


def writable_folder(folder, flag):
    """Create `folder` and prove it can be written to, or fail with a clear message."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".write_test").write_text("")
        (folder / ".write_test").unlink()
    except OSError as error:
        fail(f"cannot write to {flag} {folder}: {error.strerror or error}")
    return folder


def check_finite(loss, step):
    """A NaN or infinite loss ruins every later step: stop at once and say what to try."""
    if not math.isfinite(loss):
        fail(f"the training loss became {loss} at step {step}; try a smaller --lr")


def save_figure(fig, path):
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"wrote {path}")


def copy_to_assets(path, cfg):
    """With --assets DIR, also put the file at `path`, one of the README's pictures, into DIR."""
    if cfg.assets:
        target = writable_folder(cfg.assets, "--assets") / Path(path).name
        if target.resolve() != Path(path).resolve():  # --assets may be --out itself
            shutil.copy(path, target)
        print(f"wrote {target}")


def save_results(out, samples, data):
    """samples.npy: the generated samples, one per row; data.npy: a fresh draw of the same size."""
    for name, array in (("samples", samples), ("data", data)):
        np.save(out / f"{name}.npy", torch.as_tensor(array).detach().cpu().numpy())
    print(f"wrote {out / 'samples.npy'} and {out / 'data.npy'}")


def show_figures():
    """Open the figures in a window only where there is a display; the files are the output."""
    if plt.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        plt.show()


def figure_to_frame(fig):
    """The figure as an (H, W, 3) uint8 image, for a GIF frame."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_gif(path, frames, frame_ms=100, hold_ms=2000):
    """A looping GIF that holds its last frame, written with imageio (Pillow) alone."""
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    iio.imwrite(path, np.stack(frames), duration=durations, loop=0)
    print(f"wrote {path} ({len(frames)} frames, {Path(path).stat().st_size / 1e6:.2f} MB)")
