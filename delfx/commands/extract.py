"""Commands of the extraction stage: extract, fit-pca, export-model, train-delf."""

from __future__ import annotations

import json as jsonlib
import logging
from pathlib import Path

import click

from delfx.commands.options import (POSITIVE, RATE, SHARE, data_only_stdout, extract_config_options,
                                   resolve_config)

log = logging.getLogger("delfx")


@click.command("fit-pca")
@click.argument("images", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the PCA (HDF5).")
@click.option("--dim", type=POSITIVE, default=40, help="Components to keep.")
@click.option("--whiten", is_flag=True, help="Also learn whitening (divide by sqrt(variance)).")
@click.option("--max-images", type=POSITIVE, default=1000, help="Sample at most this many images.")
@click.option("--seed", default=0)
@extract_config_options
def fit_pca(images: Path, out: Path, dim: int, whiten: bool, max_images: int, seed: int,
            **kwargs) -> None:
    """Learn a model's PCA post-processing from raw descriptors of IMAGES (folder or list).

    Use it with --pca-path in later commands. The PCA records what it was fitted on.
    """
    from delfx.extractor.fit import fit_model_pca
    from delfx.inputs import list_images
    config = resolve_config(kwargs)
    pca = fit_model_pca(config, list_images(images), dim=dim, whiten=whiten,
                        max_images=max_images, seed=seed)
    pca.save(out)
    click.echo(str(out))


@click.command("export-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True)
@extract_config_options
def export_model(out_dir: Path, overwrite: bool, **kwargs) -> None:
    """Write a built-in DELF model as a SavedModel with the official TF-Hub signature.

    Load it anywhere with tensorflow_hub.load(OUT_DIR).signatures["default"], or in delfx with
    --model tfhub --model-path OUT_DIR.
    """
    from delfx.extractor.export import export_config
    click.echo(str(export_config(resolve_config(kwargs), out_dir, overwrite=overwrite)))


@click.command("train-delf")
@click.argument("images", type=click.Path(exists=True, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--finetune-last-block", is_flag=True,
              help="Also train VGG16 block4 (the paper's first stage); default: backbone frozen.")
@click.option("--epochs", type=POSITIVE, default=30)
@click.option("--batch-size", type=POSITIVE, default=32)
@click.option("--learning-rate", type=RATE, default=1e-3, help="Adam; halved on plateaus.")
@click.option("--crops-per-image", type=POSITIVE, default=8, help="Random multi-scale crops per image.")
@click.option("--crop-size", type=click.IntRange(32), default=192, help="Side of the crops, in pixels.")
@click.option("--max-side", type=click.IntRange(32), default=512, help="Downscale images to this long side first.")
@click.option("--validation-share", type=SHARE, default=0.2)
@click.option("--seed", type=int, default=0)
@click.option("--overwrite", is_flag=True, help="Replace an earlier train-delf model directory.")
def train_delf(images: Path, labels_csv: Path, out_dir: Path, finetune_last_block: bool,
               epochs: int, batch_size: int, learning_rate: float, crops_per_image: int,
               crop_size: int, max_side: int, validation_share: float, seed: int,
               overwrite: bool) -> None:
    """Train the attention head of the built-in VGG16 DELF network from landmark labels.

    IMAGES is a folder or list file; LABELS_CSV has id,landmark_id columns (as for `train`).
    OUT_DIR becomes a model directory: use it with --model delf-vgg16 --model-path OUT_DIR.
    """
    from delfx.extractor.train_attention import AttentionTrainConfig, train_attention
    from delfx.inputs import list_images
    from delfx.labels import read_labels
    config = AttentionTrainConfig(
        finetune_last_block=finetune_last_block, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, crops_per_image=crops_per_image, crop_size=crop_size,
        max_side=max_side, validation_share=validation_share, seed=seed)
    summary = train_attention(list_images(images), read_labels(labels_csv), out_dir, config,
                              overwrite=overwrite)
    click.echo(jsonlib.dumps({"model_dir": str(out_dir), **{k: summary[k] for k in (
        "classes", "images", "train_images", "validation_images", "trained", "final")}}))


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--shards", type=POSITIVE, default=8, help="Number of HDF5 shards (fixed per output folder).")
@click.option("--address", default=None, help="Join this Ray cluster (or set RAY_ADDRESS); "
              "default: start a local Ray instance on 127.0.0.1.")
@click.option("--num-cpus", type=POSITIVE, default=None, help="CPUs of the local Ray instance [all].")
@click.option("--workers", type=POSITIVE, default=None, help="Workers [as many as the cluster holds].")
@click.option("--cpus-per-worker", type=click.FloatRange(0, min_open=True), default=1.0)
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
              help="GPUs per worker [1 when the cluster has GPUs and the model runs a network, else 0].")
@click.option("--chunk-size", type=POSITIVE, default=16, help="Images per task.")
@click.option("--max-retries", type=click.IntRange(0), default=2, help="Retries of a chunk whose worker died.")
@click.option("--stall-timeout", type=click.FloatRange(1), default=1800.0,
              help="Stop (resumably, exit 2) when no chunk finishes for this many seconds.")
@click.option("--overwrite", is_flag=True, help="Start fresh instead of resuming.")
@click.option("--no-ray", is_flag=True, help="Run in this process, without Ray (debugging).")
@click.option("--json", is_flag=True, help="Print the summary as JSON.")
@click.option("--global-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Also store each image's GeM descriptor, from this `delfx train --model "
                   "gem-*|concat` output.")
@extract_config_options
@click.pass_context
def extract(ctx: click.Context, input_path: Path, out_dir: Path, shards: int, address: str | None,
            num_cpus: int | None, workers: int | None, cpus_per_worker: float,
            gpus_per_worker: float | None, chunk_size: int, max_retries: int, stall_timeout: float,
            overwrite: bool,
            no_ray: bool, json: bool, global_model: str | None, **kwargs) -> None:
    """Extract local features of INPUT (a folder, or a CSV/list file) into OUT_DIR.

    Resumes by default: complete, verified shards are kept and the rest is redone. Bad images
    are recorded with their reason and do not stop the run. Exit status: 0 when every shard is
    complete (even if some images failed), 2 when some shards could not be finished.
    """
    from delfx.extractor.executors import InProcessExecutor, RayExecutor
    from delfx.extractor.job import run_extraction
    from delfx.inputs import list_images
    config = resolve_config(kwargs)
    items = list_images(input_path)
    verbosity = ctx.find_root().params.get("verbose", 0)
    executor = (InProcessExecutor(global_model=global_model) if no_ray else
                RayExecutor(address=address, num_cpus=num_cpus,
                            cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                            verbosity=verbosity, global_model=global_model))
    with data_only_stdout():
        summary = run_extraction(items, config, out_dir, shards, executor, overwrite=overwrite,
                                 chunk_size=chunk_size, max_retries=max_retries, workers=workers,
                                 stall_timeout=stall_timeout)
    if json:
        click.echo(jsonlib.dumps(summary.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(_format_extract_summary(summary))
    if summary.shards_failed:
        raise SystemExit(2)


def _format_extract_summary(s) -> str:
    failed = sum(s.failed_by_reason.values())
    lines = [f"output        {s.output}",
             f"model         {s.model['id']} ({s.model['hash'][:12]})",
             f"shards        {s.shards_written} written, {s.shards_skipped} already complete, "
             f"{len(s.shards_failed)} failed, of {s.shards_planned}",
             f"images        {s.images_processed} processed ({s.ok} ok, {failed} failed) of "
             f"{s.images_total}"]
    for reason, count in sorted(s.failed_by_reason.items()):
        lines.append(f"  failed      {count} {reason}")
    if s.ok:
        lines.append(f"features      {s.features / s.ok:.0f} per ok image")
    if s.seconds_per_100 is not None:
        lines.append(f"time          {s.seconds:.1f} s ({s.executor}): {s.startup_seconds:.1f} s "
                     f"start-up, then {s.seconds_per_100_after_startup:.2f} s per 100 images; "
                     f"writing {100 * s.writer_seconds / max(s.seconds, 1e-9):.1f}% of the run")
    lines.append(f"size          {s.output_bytes / 1e6:.1f} MB")
    for index, error in sorted(s.shards_failed.items()):
        lines.append(f"FAILED shard {index}: {error}")
    return "\n".join(lines)
