"""Commands of the feature store: sample-data, verify, inspect."""

from __future__ import annotations

import json as jsonlib
import logging
from pathlib import Path

import click

log = logging.getLogger("delfx")


@click.command("sample-data")
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


@click.command()
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-checksum", is_flag=True, help="Skip re-hashing the shards (structure only).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, shards checked, "
              "problems, warnings (exit status as without it).")
def verify(feature_dir: Path, no_checksum: bool, as_json: bool) -> None:
    """Check every shard of a feature set against its manifest.

    Prints one line per problem; exit status 0 when the set is complete and intact, 1 otherwise.
    """
    from delfx.store import verify as verify_store
    report = verify_store(feature_dir, checksum=not no_checksum)
    if as_json:
        click.echo(jsonlib.dumps({"root": str(feature_dir), "ok": report.ok,
                                  "shards_checked": report.shards_checked,
                                  "checked_sha256": not no_checksum,
                                  "damaged_shards": sorted(report.bad_shards),
                                  "missing_shards": report.missing,
                                  "problems": report.problems, "warnings": report.warnings}))
        if not report.ok:
            click.get_current_context().exit(1)
        return
    for warning in report.warnings:
        log.warning("%s", warning)
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if not report.ok:
        raise click.ClickException(f"{feature_dir}: {len(report.problems)} problem(s) found")
    click.echo(f"OK {feature_dir}: {report.shards_checked} shard(s) verified")


@click.command()
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", is_flag=True, help="Machine-readable JSON instead of text.")
@click.option("--no-checksum", is_flag=True, help="Skip re-hashing the shards (structure only).")
@click.option("--failed", "list_failed", is_flag=True, help="Also list each failed image: id, "
              "reason, message (text: one tab-separated line each; --json: failed_images).")
def inspect(feature_dir: Path, json: bool, no_checksum: bool, list_failed: bool) -> None:
    """Summarise a feature set: images, failures by reason, features per image, size, model.

    The shards are verified on the way (as `delfx verify`); exit status 1 when one is damaged.
    """
    from delfx.store import inspect as inspect_store
    summary = inspect_store(feature_dir, checksum=not no_checksum, failed=list_failed)
    if json:
        click.echo(jsonlib.dumps(summary, indent=2, sort_keys=True))
    else:
        click.echo(_format_summary(summary))
        for row in summary.get("failed_images", []):
            click.echo(f"FAILED\t{row['id']}\t{row['reason']}\t{row['message']}")
    problems = summary["integrity"]["problems"]
    if problems:
        for problem in problems:
            click.echo(f"PROBLEM {problem}", err=True)
        raise click.ClickException(f"{feature_dir}: {len(problems)} damaged shard(s) (the "
                                   f"summary leaves them out); run delfx verify")


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
    integrity = s["integrity"]
    lines.append("integrity     " + ("ok" if integrity["ok"] else
                                     f"DAMAGED ({len(integrity['problems'])} problem(s))")
                 + ("" if integrity["checked_sha256"] else " (structure only, no sha256)"))
    lines.append("config        " + jsonlib.dumps(s["config"], sort_keys=True))
    return "\n".join(lines)


@click.command()
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hloc", "colmap"]), required=True,
              help="hloc: a features.h5 (keypoints x, y; descriptors D x N; scores; "
              "image_size); colmap: a COLMAP database (cameras, images, keypoints; matches).")
@click.option("--matches", "matches_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="colmap: a matches.h5 (hloc's layout, e.g. from "
              "`delfx match --hloc-out`) to import as matches (and verified inliers).")
@click.option("--overwrite", is_flag=True, help="Replace OUT when delfx exported it.")
def export(feature_dir: Path, out: Path, fmt: str, matches_path: Path | None,
           overwrite: bool) -> None:
    """Write a feature set in the layout hloc or COLMAP reads (docs/FORMAT.md)."""
    from delfx.interop import export_features
    click.echo(jsonlib.dumps(export_features(feature_dir, out, fmt, matches_path=matches_path,
                                             overwrite=overwrite)))


@click.command("import")
@click.argument("features_h5", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hloc"]), required=True,
              help="hloc: a features.h5 (e.g. SuperPoint's from hloc's extract_features).")
@click.option("--shards", type=click.IntRange(1), default=1)
def import_features(features_h5: Path, out_dir: Path, fmt: str, shards: int) -> None:
    """Read another tool's features into a delfx feature set (descriptors L2-normalised)."""
    from delfx.interop import import_hloc
    click.echo(jsonlib.dumps(import_hloc(features_h5, out_dir, shards=shards)))
