"""Options shared by several commands: the extraction settings, resolved into one config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from delfx.config import MODEL_NAMES, PRESET_NAMES


def extract_config_options(func):
    """Options that shape extracted features, shared by every command that extracts.

    None means "not given": the value then comes from the config file or the preset.
    """
    options = [
        click.option("--preset", default="delf", type=click.Choice(PRESET_NAMES),
                     help="Named starting point (see README); the options below override it."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="TOML or JSON file of extraction settings."),
        click.option("--model", type=click.Choice(MODEL_NAMES), default=None,
                     help="Feature model [default: auto]."),
        click.option("--model-path", default=None,
                     help="TF-Hub handle or SavedModel folder (tfhub); weights file "
                          "(delf-resnet50); `train-delf` model directory (delf-vgg16)."),
        click.option("--pca-path", default=None, help="PCA file from `delfx fit-pca`."),
        click.option("--image-size", type=int, default=None, help="Squash images to this square size."),
        click.option("--max-side", type=int, default=None, help="Downscale so the long side is at most this."),
        click.option("--scales", default=None, help="Pyramid scales, comma-separated."),
        click.option("--score-threshold", type=FINITE, default=None),
        click.option("--max-features", type=int, default=None),
        click.option("--descriptor-dim", type=int, default=None, help="0 keeps raw descriptors."),
        click.option("--descriptor-dtype", type=click.Choice(["float16", "float32"]), default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--precision", type=click.Choice(["float32", "bfloat16", "int8"]), default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_config(kwargs: dict):
    """Pop the extraction options from a command's kwargs and resolve them into a config."""
    from delfx.config import ExtractConfig, resolve_extract_config
    names = [f.name for f in dataclasses.fields(ExtractConfig) if f.name != "preset"]
    overrides = {name: kwargs.pop(name, None) for name in names}
    if overrides["scales"] is not None:
        try:
            overrides["scales"] = tuple(float(s) for s in overrides["scales"].split(","))
        except ValueError:
            raise click.BadParameter(f"--scales: {overrides['scales']!r} is not a list of numbers")
    return resolve_extract_config(kwargs.pop("preset"), kwargs.pop("config_file"), overrides)


# Ranges of numeric options: a bad value is a one-line usage error (exit 2), never a crash.
POSITIVE = click.IntRange(1)
RATE = click.FloatRange(0, min_open=True)
SHARE = click.FloatRange(0, 1, max_open=True)


class _Finite(click.ParamType):
    name = "number"

    def convert(self, value, param, ctx):
        import math
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = _Finite()


def job_options(func):
    """Options of a query job (search, classify): where it runs, its workers and chunks."""
    options = [
        click.option("--ray/--no-ray", "on_ray", default=False,
                     help="Run the queries on Ray workers (a local instance on 127.0.0.1 unless "
                          "--address; an index in parts is one actor per part) [--no-ray: in "
                          "this process]."),
        click.option("--address", default=None, help="Ray cluster to join with --ray (every "
                     "node must read the gallery, index and queries at the same paths)."),
        click.option("--workers", type=POSITIVE, default=None, help="Ray workers [as many as "
                     "the cluster's CPUs hold]."),
        click.option("--chunk-size", type=POSITIVE, default=None, help="Queries per chunk (a "
                     "resume redoes at most the chunks in flight) [32]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def job_ray(on_ray: bool, address: str | None, workers: int | None, out,
            needs_out: bool) -> dict | None:
    """The Ray settings of a query job (None: in this process), the options checked."""
    if address and not on_ray:
        raise click.UsageError("--address joins a Ray cluster for --ray")
    if workers and not on_ray:
        raise click.UsageError("--workers is for --ray")
    if on_ray and needs_out and out is None:
        raise click.UsageError("--ray needs --out (a job writes its output once every chunk "
                               "is done)")
    return {"address": address} if on_ray else None


def data_only_stdout():
    """A block whose stray prints go to stderr: Ray prints worker-death notices with print(),
    and stdout is for the command's data alone."""
    import contextlib
    import sys
    return contextlib.redirect_stdout(sys.stderr)
