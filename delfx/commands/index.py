"""Commands of the index stage: build-index, search, match."""

from __future__ import annotations

import json as jsonlib
import logging
import sys
from pathlib import Path

import click

from delfx.commands.options import (POSITIVE, RATE, data_only_stdout, extract_config_options,
                                   job_options, job_ray, resolve_config)
from delfx.config import DEFAULT_NPROBE, MATCHERS, RANSAC_MODELS

log = logging.getLogger("delfx")


@click.command("build-index")
@click.argument("feature_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--factory", default="auto", help="FAISS factory string; auto: Flat below 200k "
              "vectors, IVF<~4 sqrt(n)>,SQ8 up to 5e7, else IVF<~4 sqrt(n)>,PQ20.")
@click.option("--nprobe", type=POSITIVE, default=DEFAULT_NPROBE, help="IVF lists searched per query (saved as default).")
@click.option("--train-size", type=POSITIVE, default=None, help="Training sample [64 x lists, >= 100k].")
@click.option("--update", is_flag=True, help="Add the shards completed since the index was built.")
@click.option("--parts", type=POSITIVE, default=None, help="Build the index in this many parts "
              "(feature shard s in part s %% N; one trained quantizer): search merges them, "
              "in process or one Ray actor per part (search --ray).")
@click.option("--overwrite", is_flag=True)
def build_index_command(feature_dir: Path, index_dir: Path, factory: str, nprobe: int,
                        train_size: int | None, update: bool, parts: int | None,
                        overwrite: bool) -> None:
    """Index every local descriptor of FEATURE_DIR with FAISS (GPU when present)."""
    from delfx.index.faiss_index import build_index, update_index
    if update and parts:
        raise click.UsageError("--update adds to a single index; --parts builds a new one")
    if update:
        meta, added = update_index(feature_dir, index_dir)
        log.info("added shards %s", added if added else "none (index up to date)")
    elif parts:
        from delfx.index.parts import build_index_parts
        doc = build_index_parts(feature_dir, index_dir, parts, factory=factory, nprobe=nprobe,
                                train_size=train_size, overwrite=overwrite)
        click.echo(f"{index_dir}: {doc['num_vectors']} vectors in {len(doc['parts'])} parts, "
                   f"{doc['factory']}")
        return
    else:
        meta = build_index(feature_dir, index_dir, factory=factory, nprobe=nprobe,
                           train_size=train_size, overwrite=overwrite)
    click.echo(f"{index_dir}: {meta.num_vectors} vectors of {meta.num_images} images, "
               f"{meta.factory}")


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("queries", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="File [stdout].")
@click.option("--k", type=POSITIVE, default=10, help="Nearest gallery keypoints per query descriptor.")
@click.option("--max-distance", type=click.FloatRange(0), default=1.0, help="L2 distance under which a neighbour votes.")
@click.option("--shortlist", type=POSITIVE, default=30, help="Candidates verified per query.")
@click.option("--top", type=POSITIVE, default=10, help="Results per query.")
@click.option("--ransac", type=click.Choice(RANSAC_MODELS), default="affine")
@click.option("--threshold", type=RATE, default=None,
              help="RANSAC residual, share of the image diagonal [0.01 RootSIFT, 0.03 DELF].")
@click.option("--matcher", type=click.Choice(MATCHERS), default="auto",
              help="Putative matches: mnn (mutual nearest neighbours) or lightglue (a learned "
              "model's own) [auto: lightglue where the features have one, else mnn].")
@click.option("--exclude-self", is_flag=True, help="Skip gallery images with the query's id.")
@click.option("--global-shortlist", is_flag=True, help="Shortlist the --shortlist gallery images "
              "nearest by global descriptor (index global.faiss) instead of local votes.")
@click.option("--global-model", "global_model_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="GeM model that embeds query images (--global-shortlist).")
@job_options
@click.option("--json", "as_json", is_flag=True, help="With --out: print the summary as JSON.")
@click.option("--matches-out", type=click.Path(dir_okay=False, path_type=Path),
              help="With --out and a query feature set: each result's matched keypoints and "
              "inliers as hloc's matches.h5 (delfx export makes the features.h5 files).")
def search(index_dir: Path, gallery_dir: Path, queries: Path, fmt: str, out: Path | None, k: int,
           max_distance: float, shortlist: int, top: int, ransac: str, threshold: float | None,
           exclude_self: bool, global_shortlist: bool, global_model_dir: Path | None,
           matcher: str, on_ray: bool, address: str | None, workers: int | None,
           chunk_size: int | None, as_json: bool, matches_out: Path | None) -> None:
    """Retrieve and verify gallery images for QUERIES (a feature set, or images extracted with
    the gallery's own model and config).

    With --out, a resumable job: a killed or interrupted run, run again, finishes the chunks
    of queries not done yet (kept in .OUT.delfx-job/ beside OUT) and writes the same OUT.
    """
    settings = dict(k=k, max_distance=max_distance, shortlist=shortlist, top=top, ransac=ransac,
                    relative_threshold=threshold, matcher=matcher)
    ray = job_ray(on_ray, address, workers, out, needs_out=True)
    if matches_out is not None and out is None:
        raise click.UsageError("--matches-out needs --out")
    if out is None:  # streamed to stdout as each query is done
        from delfx.index.search import run_search
        from delfx.index.search_job import write_results
        results = run_search(index_dir, gallery_dir, queries, settings,
                             exclude_self=exclude_self, global_shortlist=global_shortlist,
                             global_model_dir=global_model_dir)
        write_results(sys.stdout, fmt, results)
        return
    from delfx.index.search_job import run_search_job
    with data_only_stdout():
        summary = run_search_job(index_dir, gallery_dir, queries, out, fmt=fmt,
                                 settings=settings, exclude_self=exclude_self,
                                 global_shortlist=global_shortlist,
                                 global_model_dir=global_model_dir, ray=ray, workers=workers,
                                 chunk_size=chunk_size, matches_out=matches_out)
    click.echo(jsonlib.dumps(summary) if as_json else
               f"{out}: {summary['queries']} queries ({summary['chunks_resumed']} of "
               f"{summary['chunks']} chunks resumed), {summary['executor']}, "
               f"{summary['workers']} worker(s), {summary['seconds']:.1f} s")


@click.command()
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG to draw.")
@click.option("--ransac", type=click.Choice(RANSAC_MODELS), default="affine")
@click.option("--threshold", type=RATE, default=None,
              help="RANSAC residual, share of the image diagonal [0.01 RootSIFT, 0.03 DELF].")
@click.option("--matcher", type=click.Choice(MATCHERS), default="auto",
              help="Putative matches: mnn (mutual nearest neighbours) or lightglue (a learned "
              "model's own) [auto: lightglue where the features have one, else mnn].")
@click.option("--hloc-out", type=click.Path(file_okay=False, path_type=Path),
              help="Write features.h5, matches.h5 (with the inliers) and pairs.txt here, in "
              "hloc's layout (a folder that does not exist yet, or one of delfx's).")
@extract_config_options
def match(image_a: Path, image_b: Path, out: Path | None, ransac: str, threshold: float | None,
          matcher: str, hloc_out: Path | None, **kwargs) -> None:
    """Match two images: mutual nearest neighbours + RANSAC; print the inliers, draw them."""
    from delfx.index.match import match_images
    result = match_images(image_a, image_b, resolve_config(kwargs), ransac=ransac,
                          threshold=threshold, matcher=matcher)
    if out is not None:
        result.draw(out)
    if hloc_out is not None:
        result.write_hloc(hloc_out)
    click.echo(jsonlib.dumps(result.to_json(out, hloc_out)))
