"""The `delfx` command line: each command parses options and calls one core function.

Data goes to stdout, logs and progress to stderr. Every option can also be set from the
environment as DELFX_<COMMAND>_<OPTION> (e.g. DELFX_INSPECT_JSON=1); command line wins.
Heavy libraries (TensorFlow, Ray, FAISS) are imported inside the commands that need them, so
`delfx --help` stays instant.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import logging
import sys
from pathlib import Path

import click

from delfx import __version__
from delfx.errors import DelfxError

log = logging.getLogger("delfx")


class DelfxGroup(click.Group):
    """Turns domain errors into a one-line message and exit code 1, Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DelfxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def configure_logging(verbosity: int) -> None:
    """stderr logging: -q warnings only, default delfx info, -v delfx debug, -vv everything."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("delfx").setLevel(level)
    from delfx import tf_quiet
    tf_quiet.set_verbosity(verbosity)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from delfx.versions import library_versions
    for name, version in library_versions().items():
        click.echo(f"{name} {version}")
    ctx.exit()


@click.group(cls=DelfxGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "auto_envvar_prefix": "DELFX",
                                               "show_default": True})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show delfx and library versions and exit.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: also library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """delfx: DELF local features for landmark recognition, from extraction to GAP.

    Stages: sample-data -> extract -> build-index -> train -> classify -> evaluate.
    """
    configure_logging(-1 if quiet else verbose)


@cli.command("sample-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--landmarks", default=8, help="Number of landmarks (photos shipped by installed packages).")
@click.option("--views", default=5, help="Synthetic views per landmark, besides the canonical one.")
@click.option("--non-landmarks", default=8, help="Distractor images that are no landmark.")
@click.option("--long-side", default=480, help="Long side of the canonical views, in pixels.")
@click.option("--seed", default=0, help="Random seed (same seed, same bytes).")
@click.option("--overwrite", is_flag=True, help="Replace an existing sample-data folder.")
def sample_data(out_dir: Path, landmarks: int, views: int, non_landmarks: int, long_side: int,
                seed: int, overwrite: bool) -> None:
    """Write a small labelled landmark-style image set that works offline."""
    from delfx.sample_data import write_sample_data
    dataset = write_sample_data(out_dir, landmarks=landmarks, views=views,
                                non_landmarks=non_landmarks, long_side=long_side, seed=seed,
                                overwrite=overwrite)
    n_train = sum(1 for image in dataset.images if image.split == "train")
    log.info("wrote %d images (%d train, %d query) to %s", len(dataset.images), n_train,
             len(dataset.images) - n_train, dataset.root)
    click.echo(str(dataset.labels_csv))


@cli.command()
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-checksum", is_flag=True, help="Skip re-hashing the shards (structure only).")
def verify(feature_dir: Path, no_checksum: bool) -> None:
    """Check every shard of a feature set against its manifest.

    Prints one line per problem; exit status 0 when the set is complete and intact, 1 otherwise.
    """
    from delfx.store import verify as verify_store
    report = verify_store(feature_dir, checksum=not no_checksum)
    for warning in report.warnings:
        log.warning("%s", warning)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if not report.ok:
        raise click.ClickException(f"{feature_dir}: {len(report.problems)} problem(s) found")
    click.echo(f"OK {feature_dir}: {report.shards_checked} shard(s) verified")


@cli.command()
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", is_flag=True, help="Machine-readable JSON instead of text.")
def inspect(feature_dir: Path, json: bool) -> None:
    """Summarise a feature set: images, failures by reason, features per image, size, model."""
    from delfx.store import inspect as inspect_store
    summary = inspect_store(feature_dir)
    if json:
        click.echo(jsonlib.dumps(summary, indent=2, sort_keys=True))
        return
    click.echo(_format_summary(summary))


def _format_summary(s: dict) -> str:
    images, feats, size = s["images"], s["features"], s["bytes"]
    lines = [f"feature set   {s['root']}",
             f"model         {s['model']['id']} ({s['model']['hash'][:12]})",
             f"descriptors   {s['descriptor']['dim']}-d {s['descriptor']['dtype']}",
             f"shards        {s['shards']['complete']} of {s['shards']['planned']} complete",
             f"images        {images['total']} ({images['ok']} ok, {images['failed']} failed)"]
    for reason, count in images["failed_by_reason"].items():
        lines.append(f"  failed      {count} {reason}")
    per = feats["per_ok_image"]
    lines.append(f"features      {feats['total']}" + (
        f" (per image min {per['min']}, median {per['median']:g}, max {per['max']})" if per else ""))
    if size["per_image"] is not None:
        lines.append(f"size          {size['total'] / 1e6:.1f} MB ({size['per_image'] / 1e3:.1f} kB per image)")
    if s.get("global"):
        g = s["global"]
        lines.append(f"global        {g['dim']}-d {g['id']} ({str(g['hash'])[:12]})")
    lines.append("config        " + jsonlib.dumps(s["config"], sort_keys=True))
    return "\n".join(lines)


def extract_config_options(func):
    """Options that shape extracted features, shared by every command that extracts.

    None means "not given": the value then comes from the config file or the preset.
    """
    options = [
        click.option("--preset", default="delf", type=click.Choice(["seed128", "delf", "fast"]),
                     help="Named starting point (see README); the options below override it."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False,
                     path_type=Path), help="TOML or JSON file of extraction settings."),
        click.option("--model", type=click.Choice(["auto", "tfhub", "delf-vgg16", "delf-resnet50",
                     "rootsift", "delf-hybrid"]), default=None,
                     help="Feature model [default: auto]."),
        click.option("--model-path", default=None,
                     help="TF-Hub handle or SavedModel folder (tfhub); weights file "
                          "(delf-resnet50); `train-delf` model directory (delf-vgg16)."),
        click.option("--pca-path", default=None, help="PCA file from `delfx fit-pca`."),
        click.option("--image-size", type=int, default=None, help="Squash images to this square size."),
        click.option("--max-side", type=int, default=None, help="Downscale so the long side is at most this."),
        click.option("--scales", default=None, help="Pyramid scales, comma-separated."),
        click.option("--score-threshold", type=float, default=None),
        click.option("--max-features", type=int, default=None),
        click.option("--descriptor-dim", type=int, default=None, help="0 keeps raw descriptors."),
        click.option("--descriptor-dtype", type=click.Choice(["float16", "float32"]), default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default=None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_config(kwargs: dict):
    """Pop the extraction options from a command's kwargs and resolve them into a config."""
    from delfx.config import ExtractConfig, resolve_extract_config
    names = [f.name for f in __import__("dataclasses").fields(ExtractConfig) if f.name != "preset"]
    overrides = {name: kwargs.pop(name, None) for name in names}
    if overrides["scales"] is not None:
        try:
            overrides["scales"] = tuple(float(s) for s in overrides["scales"].split(","))
        except ValueError:
            raise click.BadParameter(f"--scales: {overrides['scales']!r} is not a list of numbers")
    return resolve_extract_config(kwargs.pop("preset"), kwargs.pop("config_file"), overrides)


@cli.command("fit-pca")
@click.argument("images", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the PCA (HDF5).")
@click.option("--dim", default=40, help="Components to keep.")
@click.option("--whiten", is_flag=True, help="Also learn whitening (divide by sqrt(variance)).")
@click.option("--max-images", type=int, default=1000, help="Sample at most this many images.")
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
    if config.model == "auto":
        from delfx.extractor.models import OFFLINE_DEFAULT
        config = config.replace(model=OFFLINE_DEFAULT)
    pca = fit_model_pca(config, list_images(images), dim=dim, whiten=whiten,
                        max_images=max_images, seed=seed)
    pca.save(out)
    click.echo(str(out))


@cli.command("export-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True)
@extract_config_options
def export_model(out_dir: Path, overwrite: bool, **kwargs) -> None:
    """Write a built-in DELF model as a SavedModel with the official TF-Hub signature.

    Load it anywhere with tensorflow_hub.load(OUT_DIR).signatures["default"], or in delfx with
    --model tfhub --model-path OUT_DIR.
    """
    from delfx.extractor.delf import DelfModel
    from delfx.extractor.export import export_model as export
    from delfx.extractor.models import create_model
    config = resolve_config(kwargs)
    if config.model in ("auto", None):
        config = config.replace(model="delf-vgg16")
    if config.model == "delf-hybrid":
        raise DelfxError("export-model cannot export delf-hybrid: its keypoints come from OpenCV "
                         "SIFT, which the official DELF signature (a TensorFlow graph) cannot "
                         "express; extract with delfx, or export delf-vgg16")
    model = create_model(config)
    if not isinstance(model, DelfModel):
        raise click.ClickException(f"export-model exports the built-in DELF models "
                                   f"(delf-vgg16, delf-resnet50), not {config.model}")
    export(model, out_dir, overwrite=overwrite)
    click.echo(str(out_dir))


@cli.command("train-delf")
@click.argument("images", type=click.Path(exists=True, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--finetune-last-block", is_flag=True,
              help="Also train VGG16 block4 (the paper's first stage); default: backbone frozen.")
@click.option("--epochs", type=int, default=30)
@click.option("--batch-size", type=int, default=32)
@click.option("--learning-rate", type=float, default=1e-3, help="Adam; halved on plateaus.")
@click.option("--crops-per-image", type=int, default=8, help="Random multi-scale crops per image.")
@click.option("--crop-size", type=int, default=192, help="Side of the crops, in pixels.")
@click.option("--max-side", type=int, default=512, help="Downscale images to this long side first.")
@click.option("--validation-share", type=float, default=0.2)
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
    from delfx.classifier.data import read_labels
    from delfx.extractor.train_attention import AttentionTrainConfig, train_attention
    from delfx.inputs import list_images
    config = AttentionTrainConfig(
        finetune_last_block=finetune_last_block, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, crops_per_image=crops_per_image, crop_size=crop_size,
        max_side=max_side, validation_share=validation_share, seed=seed)
    summary = train_attention(list_images(images), read_labels(labels_csv), out_dir, config,
                              overwrite=overwrite)
    click.echo(jsonlib.dumps({"model_dir": str(out_dir), **{k: summary[k] for k in (
        "classes", "images", "train_images", "validation_images", "trained", "final")}}))


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--shards", default=8, help="Number of HDF5 shards (fixed per output folder).")
@click.option("--address", default=None, help="Join this Ray cluster (or set RAY_ADDRESS); "
              "default: start a local Ray instance on 127.0.0.1.")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance [all].")
@click.option("--workers", type=int, default=None, help="Workers [as many as the cluster holds].")
@click.option("--cpus-per-worker", type=float, default=1.0)
@click.option("--gpus-per-worker", type=float, default=None,
              help="GPUs per worker [1 when the cluster has GPUs and the model uses TensorFlow, else 0].")
@click.option("--chunk-size", default=16, help="Images per task.")
@click.option("--max-retries", default=2, help="Retries of a chunk whose worker died.")
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
            gpus_per_worker: float | None, chunk_size: int, max_retries: int, overwrite: bool,
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
    if global_model is not None:  # refuse a wrong folder before starting any worker
        from delfx.globalnet.model import load_global_model
        load_global_model(global_model)
    executor = (InProcessExecutor(config, global_model=global_model) if no_ray else
                RayExecutor(config, address=address, num_cpus=num_cpus,
                            cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                            verbosity=verbosity, global_model=global_model))
    # Ray prints worker-death notices with print(): keep stdout for our data alone.
    with contextlib.redirect_stdout(sys.stderr):
        summary = run_extraction(items, config, out_dir, shards, executor, overwrite=overwrite,
                                 chunk_size=chunk_size, max_retries=max_retries, workers=workers)
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
        lines.append(f"time          {s.seconds:.1f} s ({s.seconds_per_100:.2f} s per 100 images, "
                     f"{s.executor})")
    lines.append(f"size          {s.output_bytes / 1e6:.1f} MB")
    for index, error in sorted(s.shards_failed.items()):
        lines.append(f"FAILED shard {index}: {error}")
    return "\n".join(lines)


@cli.command("build-index")
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--factory", default="auto", help="FAISS factory string; auto: Flat below 200k "
              "vectors, else IVF<~4 sqrt(n)>,PQ20.")
@click.option("--nprobe", default=16, help="IVF lists searched per query (saved as default).")
@click.option("--train-size", type=int, default=None, help="Training sample [64 x lists, >= 100k].")
@click.option("--update", is_flag=True, help="Add the shards completed since the index was built.")
@click.option("--overwrite", is_flag=True)
def build_index_command(feature_dir: Path, index_dir: Path, factory: str, nprobe: int,
                        train_size: int | None, update: bool, overwrite: bool) -> None:
    """Index every local descriptor of FEATURE_DIR with FAISS (GPU when present)."""
    from delfx.index.faiss_index import build_index, update_index
    if update:
        meta, added = update_index(feature_dir, index_dir)
        log.info("added shards %s", added if added else "none (index up to date)")
    else:
        meta = build_index(feature_dir, index_dir, factory=factory, nprobe=nprobe,
                           train_size=train_size, overwrite=overwrite)
    click.echo(f"{index_dir}: {meta.num_vectors} vectors of {meta.num_images} images, "
               f"{meta.factory}")


@cli.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("queries", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File [stdout].")
@click.option("--k", default=10, help="Nearest gallery keypoints per query descriptor.")
@click.option("--max-distance", default=1.0, help="L2 distance under which a neighbour votes.")
@click.option("--shortlist", default=30, help="Candidates verified per query.")
@click.option("--top", default=10, help="Results per query.")
@click.option("--ransac", type=click.Choice(["affine", "homography", "similarity"]), default="affine")
@click.option("--threshold", type=float, default=None,
              help="RANSAC residual, share of the image diagonal [0.01 RootSIFT, 0.03 DELF].")
@click.option("--exclude-self", is_flag=True, help="Skip gallery images with the query's id.")
@click.option("--global-shortlist", is_flag=True, help="Shortlist the --shortlist gallery images "
              "nearest by global descriptor (index global.faiss) instead of local votes.")
@click.option("--global-model", "global_model_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="GeM model that embeds query images (--global-shortlist).")
def search(index_dir: Path, gallery_dir: Path, queries: Path, fmt: str, out: Path | None, k: int,
           max_distance: float, shortlist: int, top: int, ransac: str, threshold: float | None,
           exclude_self: bool, global_shortlist: bool, global_model_dir: Path | None) -> None:
    """Retrieve and verify gallery images for QUERIES (a feature set, or images extracted with
    the gallery's own model and config)."""
    import csv as csvlib
    from delfx.index.faiss_index import GalleryIndex, check_compatible
    from delfx.index.search import SearchConfig, default_threshold, search_many
    from delfx.store import FeatureSet
    gallery = FeatureSet(gallery_dir, require_complete=False)
    index = GalleryIndex(index_dir)
    check_compatible(index.meta, gallery, index_dir)
    config = SearchConfig(k=k, max_distance=max_distance, shortlist=shortlist, top=top,
                          model=ransac, relative_threshold=threshold or
                          default_threshold(gallery.manifest.model_id))
    global_index = global_model = None
    if global_shortlist:
        from delfx.index.global_index import GlobalIndex
        if not GlobalIndex.exists(index_dir):
            raise click.ClickException(f"{index_dir} has no global index: extract the gallery "
                                       f"with --global-model, then build-index")
        global_index = GlobalIndex.load(index_dir)
        if global_model_dir is not None:
            from delfx.globalnet.model import load_global_model
            global_model = load_global_model(global_model_dir)
            global_index.check_query_model(global_model.describe(), str(global_model_dir))
    records = _query_records(queries, gallery, global_model)
    handle = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csvlib.writer(handle) if fmt == "csv" else None
        if writer:
            writer.writerow(["query", "rank", "gallery_id", "inliers", "votes", "matches", "score"])
        for results in search_many(records, index, gallery, config, exclude_self, global_index):
            for r in results:
                if writer:
                    writer.writerow([r.query, r.rank, r.gallery_id, r.inliers, r.votes, r.matches, r.score])
                else:
                    handle.write(jsonlib.dumps(r.to_json()) + "\n")
            handle.flush()
    finally:
        if out:
            handle.close()


def _query_records(queries: Path, gallery, global_model=None):
    """Records of a query feature set, or of query images extracted like the gallery.

    global_model: a GlobalModel whose descriptors the queries must carry (query images are
    embedded with it; a query feature set must have been extracted with it).
    """
    from delfx.store import FeatureSet
    from delfx.store.schema import MANIFEST_NAME
    if (queries / MANIFEST_NAME).is_file():
        query_set = FeatureSet(queries, require_complete=False)
        if query_set.manifest.model_hash != gallery.manifest.model_hash:
            raise click.ClickException(f"{queries} was extracted with {query_set.manifest.model_id}, "
                                       f"the gallery with {gallery.manifest.model_id}")
        wanted = global_model.describe() if global_model is not None else gallery.global_model
        found = query_set.global_model
        if found and wanted and found["hash"] != wanted["hash"]:
            raise click.ClickException(f"{queries} holds global descriptors of {found['id']} "
                                       f"({found['hash'][:12]}), {wanted['id']} "
                                       f"({wanted['hash'][:12]}) is needed")
        return iter(query_set)
    from delfx.extractor.models import model_for_features
    from delfx.extractor.run import extract_items
    from delfx.inputs import list_images
    model = model_for_features(gallery.manifest)
    if global_model is not None:
        from delfx.globalnet.embed import WithGlobal
        model = WithGlobal(model, global_model)
    return extract_items(model, list_images(queries))


@cli.command()
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG to draw.")
@click.option("--ransac", type=click.Choice(["affine", "homography", "similarity"]), default="affine")
@click.option("--threshold", type=float, default=None,
              help="RANSAC residual, share of the image diagonal [0.01 RootSIFT, 0.03 DELF].")
@extract_config_options
def match(image_a: Path, image_b: Path, out: Path | None, ransac: str, threshold: float | None,
          **kwargs) -> None:
    """Match two images: mutual nearest neighbours + RANSAC; print the inliers, draw them."""
    import numpy as np
    from delfx.extractor.images import load_image
    from delfx.extractor.models import create_model
    from delfx.index.geometry import mutual_nearest_neighbours, verify_pair
    from delfx.index.search import default_threshold
    config = resolve_config(kwargs)
    model = create_model(config)
    images = [load_image(p, max_pixels=config.max_pixels) for p in (image_a, image_b)]
    a, b = (model.extract(image, str(p)) for image, p in zip(images, (image_a, image_b)))
    matches = mutual_nearest_neighbours(a.descriptors, b.descriptors)
    result = verify_pair(a.locations, b.locations, matches, model=ransac,
                         relative_threshold=threshold or default_threshold(model.model_id),
                         image_size_b=(b.height, b.width))
    if out is not None:
        from delfx.index.visualize import draw_matches, save_png
        inl = result.inlier_mask
        qa, qb = matches.query_idx, matches.gallery_idx
        canvas = draw_matches(images[0], images[1], a.locations[qa[inl]], b.locations[qb[inl]],
                              outliers_a_yx=a.locations[qa[~inl]], outliers_b_yx=b.locations[qb[~inl]],
                              title=f"{model.model_id}: {result.inliers} inliers / {len(matches)} matches")
        save_png(out, canvas)
    click.echo(jsonlib.dumps({"image_a": str(image_a), "image_b": str(image_b),
                              "model": model.model_id, "features_a": a.num_features,
                              "features_b": b.num_features, "matches": len(matches),
                              "inliers": result.inliers, "ransac": ransac,
                              "transform_xy": None if result.transform is None
                              else np.asarray(result.transform).round(6).tolist(),
                              "picture": str(out) if out else None}))


TRAIN_MODELS = ("delf-bottleneck", "gem-vgg16", "gem-resnet50", "concat")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_name", type=click.Choice(TRAIN_MODELS), default="delf-bottleneck",
              help="delf-bottleneck: head over local features (INPUT = a feature set); gem-*, "
                   "concat: GeM global models trained on images (INPUT = image folder or list).")
@click.option("--head", type=click.Choice(["pool", "flatten"]), default=None,
              help="delf-bottleneck: pool (order-invariant, default) or flatten (the reference 150 x D).")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ResNet50 .weights.h5 (gem-resnet50, concat).")
@click.option("--image-size", type=int, default=None, help="GeM models: images squashed to this square.")
@click.option("--crop-size", type=int, default=None, help="GeM models: random training crop side.")
@click.option("--per-channel-p", is_flag=True, help="GeM models: one learnt p per channel.")
@click.option("--fine-tune", is_flag=True, help="GeM models: train the backbone too (slow on CPU).")
@click.option("--units", type=int, default=None)
@click.option("--blocks", type=int, default=None, help="Dense -> BatchNorm -> activation -> Dropout blocks.")
@click.option("--activation", default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--min-samples", type=int, default=None, help="Drop classes with fewer images.")
@click.option("--validation-share", type=float, default=None)
@click.option("--no-class-weighting", is_flag=True)
@click.option("--seed", type=int, default=None)
@click.option("--overwrite", is_flag=True)
def train(input_path: Path, labels_csv: Path, out_dir: Path, model_name: str, overwrite: bool,
          no_class_weighting: bool, per_channel_p: bool, fine_tune: bool, **options) -> None:
    """Train a landmark classifier on INPUT with LABELS_CSV (id,landmark_id).

    INPUT is a feature set (`delfx extract`) for delf-bottleneck, images (a folder, or a list
    file with id,path columns) for the GeM models.
    """
    changes = {k: v for k, v in options.items() if v is not None}
    if no_class_weighting:
        changes["class_weighting"] = False
    if model_name == "delf-bottleneck":
        from delfx.classifier.model import ClassifierConfig
        from delfx.classifier.train import train_classifier
        given = [n for n in ("backbone_weights", "image_size", "crop_size") if n in changes]
        given += [n for n, flag in (("per_channel_p", per_channel_p), ("fine_tune", fine_tune))
                  if flag]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} is for the GeM models")
        result = train_classifier(input_path, labels_csv, out_dir,
                                  ClassifierConfig().replace(**changes), overwrite=overwrite)
        train_rate, infer_rate = result.train_samples_per_s, result.inference_samples_per_s
    else:
        from delfx.globalnet.model import GlobalConfig
        from delfx.globalnet.train import train_global_model
        if "head" in changes:
            raise click.UsageError("--head is for delf-bottleneck")
        config = GlobalConfig(model=model_name, **changes, per_channel_p=per_channel_p,
                              fine_tune=fine_tune)
        result = train_global_model(input_path, labels_csv, out_dir, config, overwrite=overwrite)
        train_rate, infer_rate = result.train_images_per_s, result.inference_images_per_s
    click.echo(jsonlib.dumps({"out_dir": str(result.out_dir), "model": model_name,
                              "classes": result.num_classes,
                              "train_images": result.train_images,
                              "validation_images": result.validation_images,
                              "val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
                              "train_samples_per_s": round(train_rate, 1),
                              "inference_samples_per_s": round(infer_rate, 1)}))


@cli.command()
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("gallery_labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("queries", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Kaggle submission CSV (id,landmarks).")
@click.option("--mode", type=click.Choice(["fused", "classifier", "retrieval", "shortlist"]),
              default="fused", help="shortlist: nearest gallery images by global descriptor, "
              "verified with local features (needs a gallery extracted with --global-model).")
@click.option("--classifier", "classifier_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="From `delfx train`, any --model (classifier and fused modes).")
@click.option("--global-model", "global_model_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="GeM model that embeds query images (shortlist mode; the "
              "gallery's global model).")
@click.option("--shortlist", type=int, default=30, help="Gallery images verified per query "
              "(shortlist mode).")
@click.option("--index", "index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="From `delfx build-index` on GALLERY_DIR (retrieval and fused modes).")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration JSON to use; with --calibrate, where to write it.")
@click.option("--calibrate", is_flag=True, help="Fit the calibration first: leave-one-out over "
              "the labelled gallery (the classifier's validation images in classifier/fused mode).")
@click.option("--evidence", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON lines with each query's candidates and evidence.")
@click.option("--min-score", type=float, default=0.0, help="No prediction below this score.")
@click.option("--top-k", type=int, default=3, help="Classifier proposals verified (fused).")
def classify(gallery_dir: Path, gallery_labels: Path, queries: Path, out: Path, mode: str,
             classifier_dir: Path | None, index_dir: Path | None, calibration: Path | None,
             calibrate: bool, evidence: Path | None, min_score: float, top_k: int,
             global_model_dir: Path | None, shortlist: int) -> None:
    """Recognise the landmark of QUERIES (a feature set, or images extracted on the fly)."""
    from delfx.classifier.pipeline import run_classify
    summary = run_classify(gallery_dir, gallery_labels, queries, out, mode=mode,
                           classifier_dir=classifier_dir, index_dir=index_dir,
                           calibration_path=calibration, calibrate=calibrate,
                           evidence_path=evidence, min_score=min_score, top_k=top_k,
                           shortlist=shortlist, global_model_dir=global_model_dir,
                           query_records=lambda gallery, global_model: _query_records(
                               queries, gallery, global_model))
    click.echo(jsonlib.dumps(summary))


@cli.command()
@click.argument("submission", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("labels_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.md, report.json and per_class.png here.")
def evaluate(submission: Path, labels_csv: Path, report_dir: Path | None) -> None:
    """GAP and top-1 accuracy of a Kaggle-form SUBMISSION against LABELS_CSV (id,landmark_id)."""
    from delfx.classifier.data import read_labels
    from delfx.evaluate import evaluate as evaluate_predictions, read_submission, write_report
    report = evaluate_predictions(read_submission(submission), read_labels(labels_csv))
    if report_dir is not None:
        write_report(report, report_dir, title=f"delfx evaluation of {submission.name}")
    click.echo(jsonlib.dumps({k: v for k, v in report.items() if k != "per_class"}))


def main() -> None:
    cli(prog_name="delfx")
