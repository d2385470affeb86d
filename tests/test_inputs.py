"""Which images to process: folders and list files, with stable ids."""

from __future__ import annotations

import pytest

from delfx.errors import DelfxError
from delfx.inputs import list_images


def test_list_files(tmp_path):
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / name)
    (tmp_path / "list.csv").write_text("id,path\nfirst,imgs/a.jpg\nsecond,imgs/b.png\n")
    (tmp_path / "list.txt").write_text("imgs/b.png\n# comment\nimgs/a.jpg\n")
    assert [(i.image_id, i.path) for i in list_images(tmp_path / "list.csv")] == [
        ("first", str(tmp_path / "imgs/a.jpg")), ("second", str(tmp_path / "imgs/b.png"))]
    assert [i.image_id for i in list_images(tmp_path / "list.txt")] == ["imgs/a.jpg", "imgs/b.png"]
    assert [i.image_id for i in list_images(tmp_path / "imgs")] == ["a.jpg", "b.png"]
    (tmp_path / "dup.csv").write_text("id,path\nx,imgs/a.jpg\nx,imgs/b.png\n")
    with pytest.raises(DelfxError, match="appears twice"):
        list_images(tmp_path / "dup.csv")
    with pytest.raises(DelfxError, match="not found"):
        list_images(tmp_path / "nope")
