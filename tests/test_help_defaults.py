"""Every default a command's --help prints is the value the command uses.

Each option's help states its defaults in one of three forms, which this test reads:

- ``[default: V]`` (click's ``show_default``, or written by hand where the value comes
  from the configuration): the same for every preset;
- ``[default: demo preset V1, paper preset V2]``: what each preset gives with no other flag;
- ``paper: V1, strong: V2`` (``fit``): under each recipe, for every preset, where
  ``V (demo preset: V3)`` is V3 under the demo preset.

A ``[default: ...]`` value is read up to its first `` (`` or ``;``. The value used is the
click option's default when it has one (what the command receives), else the configuration
the command would build: ``config.make_config`` for ``fit``, the grid's run configuration
for ``ablate``. A default that is a rule rather than a value is in ``DESCRIBED`` with the
check that keeps it true; any other mention of a default fails, so a new one must take a form
above.
"""

import math
import re

import click
import pytest

from aaa_keras import config as config_lib
from aaa_keras.ablate import grid
from aaa_keras.data.source import portable_data
from cli import cli

PRESETS = tuple(config_lib.PRESETS)
SINGLE = re.compile(r"\[default: ([^\]]+)\]")
PER_PRESET = re.compile(r"(\w+) preset ([^,]+)")
PER_RECIPE = re.compile(r"\b(paper|strong): ([^\s,;()\]]+)(?: \(demo preset: ([^)]+)\))?")


def _check_nlist():
    from aaa_keras.deploy.gallery import default_nlist

    for count in (256, 1000, 24_000, 25_000, 10 ** 6):
        assert default_nlist(count) == max(1, min(int(4 * math.sqrt(count)), count // 39)), count


def _check_pq_m():
    from aaa_keras.deploy.gallery import default_pq_m

    for dim in (2048, 1280, 960, 100, 6):
        assert default_pq_m(dim) == max(m for m in range(1, min(64, dim // 2) + 1) if dim % m == 0), dim


def _check_test_ids(tmp_path):
    from aaa_keras.data.layouts import load_dataset
    from aaa_keras.data.synth import synthesize_market

    root = synthesize_market(str(tmp_path / "synth"), num_ids=7, num_cams=2, seed=0)
    assert len({r.pid for r in load_dataset(root).query}) == 4  # 7 ids: half, rounded up


def _check_ablate_table():
    from aaa_keras.ablate import default_table

    assert default_table("builtin:occluded", None) == "occlusion"
    assert default_table("builtin:ablate", 0) == "occlusion"  # --occlude-queries 0
    assert default_table("builtin:ablate", None) == "all"


# (command, option): (the words of a default that is a rule, its check)
DESCRIBED = {
    ("fit", "baseline_epochs"): ("--epochs", lambda tmp: all(
        config_lib.make_config(p, epochs=7).stage_epochs("baseline") == 7 for p in PRESETS)),
    ("fit", "neck_feature"): ("fit: after; evaluate: the run's own; export: before when int8 TFLite is exported (in every format of that export), else the run's own", lambda tmp: all(
        config_lib.make_config(p, recipe=r).neck_feature == "after" for p in PRESETS for r in config_lib.RECIPES)),
    ("evaluate", "neck_feature"): ("fit: after; evaluate: the run's own; export: before when int8 TFLite is exported (in every format of that export), else the run's own", None),
    ("export", "neck_feature"): ("fit: after; evaluate: the run's own; export: before when int8 TFLite is exported (in every format of that export), else the run's own",
                                 lambda tmp: __import__("aaa_keras.deploy.export", fromlist=["x"]).INT8_NECK_FEATURE == "before"),
    ("index", "nlist"): ("min(4 sqrt(N), N // 39)", lambda tmp: _check_nlist()),
    ("index", "pq_m"): ("the largest divisor of D up to min(64, D / 2)", lambda tmp: _check_pq_m()),
    ("data synth", "test_ids"): ("half, rounded up", _check_test_ids),
    ("evaluate", "stage"): ("Default: the latest trained stage", None),
    ("visualize", "stage"): ("Default: the latest trained stage", None),
    ("export", "stage"): ("Default: the latest trained stage", None),
    ("evaluate", "data_dir"): ("Default: the run's own dataset", None),
    ("visualize", "data_dir"): ("Default: the run's own dataset", None),
    ("export", "data_dir"): ("Default: the run's own dataset", None),
    ("visualize", "out_dir"): ("Default: RUN_DIR/pictures", None),
    ("export", "version"): ("Default: the next free version", None),
    ("export", "parity_max_images"): ("default all", None),
    ("search", "nprobe"): ("default: the index's own", None),
    ("fit", "attention_filters"): (
        "clip(channels of the occluded feature map, 64, 256): 64 on tiny_resnet, 256 on ResNet-50 at conv3",
        lambda tmp: all(config_lib.make_config(p).attention_filters == 0 for p in PRESETS)
        and __import__("aaa_keras.model.attention", fromlist=["x"]).attention_width(32) == 64
        and __import__("aaa_keras.model.attention", fromlist=["x"]).attention_width(512) == 256),
    ("ablate", "out"): ("runs/ablate for builtin:ablate, else runs/ablate-<dataset name>; -<preset> for another preset "
                        "than demo, -oq<SEED> with --occlude-queries, -strong with --recipe strong",
                        lambda tmp: grid.default_out("builtin:ablate", None) == "runs/ablate"
                        and grid.default_out("builtin:occluded", "strong") == "runs/ablate-occluded-strong"),
    ("ablate", "table"): ("occlusion with occluded queries (builtin:occluded, --occlude-queries), else all",
                          lambda tmp: _check_ablate_table()),
    ("search", "k_factor"): ("default: the index's own", None),
    ("search", "ef_search"): ("default: the index's own", None),
    ("index", "pca"): ("min(256, D)", lambda tmp: __import__("aaa_keras.deploy.index_types", fromlist=["x"])
                       .default_pca(2048) == 256),
}


def commands(group=cli, path=()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


COMMANDS = dict(commands())


def help_records(path):
    """``{option name: (option, its help line as --help prints it, unwrapped)}``."""
    command = COMMANDS[path]
    ctx = click.Context(command, info_name=path[-1], parent=click.Context(cli, info_name="cli.py"))
    records = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None and param.name != "help":
            records[param.name] = (param, record[1])
    return records


def used(path, param, preset, recipe=None):
    """The value the command uses for ``param`` when it is not given."""
    if param.default is not None:
        return param.default
    if path == ("fit",):
        config = config_lib.make_config(preset, recipe)
    elif path == ("ablate",):
        settings = grid.grid_settings(preset, None, grid.ABLATE_DATA, {})
        config = config_lib.make_config(preset, epochs=settings["epochs_per_stage"],
                                        baseline_epochs=settings["baseline_epochs"],
                                        **grid.config_overrides(settings["overrides"]))
        if param.name == "baseline_epochs":
            return config.stage_epochs("baseline")
    else:
        raise AssertionError(f"{' '.join(path)} --{param.name}: a default in its help but none in click")
    if param.name == "image_size":
        return f"{config.image_height}x{config.image_width}"
    if param.name == "data_dir":
        return portable_data(config.data)
    return getattr(config, param.name)


def same(claimed: str, actual, param) -> bool:
    claimed = claimed.strip().rstrip(".")
    if isinstance(actual, bool):  # on / off, or the flag that is on (click's show_default)
        names = (param.opts if actual else param.secondary_opts) if param.is_flag else []
        return claimed == ("on" if actual else "off") or claimed in [n.lstrip("-") for n in names]
    if isinstance(actual, (list, tuple)):
        return claimed == ", ".join(map(str, actual))
    if actual == "":
        return claimed == "none"
    if isinstance(actual, (int, float)):
        try:
            return math.isclose(float(claimed), float(actual), rel_tol=1e-9)
        except ValueError:
            return False
    return claimed == str(actual)


def value_of(text: str) -> str:
    return re.split(r" \(|;", text, maxsplit=1)[0]


def wrong_defaults(path, tmp_path) -> list[str]:
    """Every default the help of ``path`` states that the command does not use (empty: all true)."""
    wrong = []
    for name, (param, text) in help_records(path).items():
        where = f"{' '.join(path)} --{name.replace('_', '-')}"
        described = DESCRIBED.get((" ".join(path), name))
        if described is not None:
            words, check = described
            if words not in text:
                wrong.append(f"{where}: DESCRIBED expects {words!r} in {text!r}")
                continue
            if check is not None:
                check(tmp_path)
            text = re.sub(r"\[default: *\]", "", text.replace(words, ""))
        for match in SINGLE.finditer(text):
            claim = match.group(1)
            per_preset = dict(PER_PRESET.findall(claim)) if " preset " in claim else None
            if per_preset is not None and set(per_preset) != set(PRESETS):
                wrong.append(f"{where}: {claim!r} names presets {sorted(per_preset)}, not {sorted(PRESETS)}")
                continue
            for preset in PRESETS:
                claimed = per_preset[preset] if per_preset else value_of(claim)
                actual = used(path, param, preset)
                if not same(claimed, actual, param):
                    wrong.append(f"{where}: help says {claimed!r} ({preset} preset), the command uses {actual!r}")
        text = SINGLE.sub("", text)
        if path == ("fit",):
            for recipe, claimed, on_demo in PER_RECIPE.findall(text):
                for preset in PRESETS:
                    value = on_demo if (on_demo and preset == "demo") else claimed
                    actual = used(path, param, preset, recipe)
                    if not same(value, actual, param):
                        wrong.append(f"{where}: help says {value!r} under --recipe {recipe} ({preset} preset), "
                                     f"the command uses {actual!r}")
        if "default" in text.lower():
            wrong.append(f"{where}: a default in a form this test cannot check: {text!r}")
    return wrong


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p))
def test_every_default_in_the_help_is_the_one_used(path, tmp_path):
    assert wrong_defaults(path, tmp_path) == []


def test_the_help_records_are_what_help_prints():
    """The records read above are the lines of ``--help``, not another text."""
    from click.testing import CliRunner

    printed = "".join(CliRunner().invoke(cli, ["fit", "--help"]).output.split())  # wrapped at spaces and hyphens
    for param, text in help_records(("fit",)).values():
        assert "".join(text.split()) in printed, text


def test_a_wrong_default_fails(tmp_path, monkeypatch):
    """The check itself: a help text that states a wrong default is reported."""
    option = next(p for p in COMMANDS[("fit",)].params if p.name == "dropout")
    monkeypatch.setattr(option, "help", "Dropout before the classifier. paper: 0.5, strong: 0.5.")
    assert [w for w in wrong_defaults(("fit",), tmp_path) if "--dropout" in w and "strong" in w]
    monkeypatch.setattr(option, "help", "0.5 for Market-1501 (default), 0.6 for Duke.")
    assert [w for w in wrong_defaults(("fit",), tmp_path) if "--dropout" in w and "cannot check" in w]
