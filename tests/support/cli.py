"""Helpers for tests that drive the command line on sample data."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner


def invoke(*args) -> str:
    """Run `delfx ARGS` in-process; assert exit 0; return stdout."""
    from delfx.cli import cli
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def write_split_lists(dataset, root: Path) -> None:
    """train_list.csv and query_list.csv (id,path) under `root`, from a sample-data set's split."""
    data = dataset.root
    for split in ("train", "query"):
        with open(data / f"{split}.csv", newline="") as handle:
            ids = {row["id"] for row in csv.DictReader(handle)}
        rows = [i for i in dataset.images if i.id in ids]
        (Path(root) / f"{split}_list.csv").write_text(
            "id,path\n" + "".join(f"{i.id},{data / i.path}\n" for i in rows))
