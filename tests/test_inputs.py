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


@pytest.fixture()
def imgs(tmp_path):
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (20, 20)).save(tmp_path / "imgs" / name)
    return tmp_path


@pytest.mark.parametrize("content, message", [
    (b"id,path\na\x00b,imgs/a.jpg\nc,imgs/b.jpg\n", r"list.csv:2: image id 'a\\x00b' contains"),
    (b"id,path\na,imgs/a.jpg\nb\n", r"list.csv:3: image 'b' has no path"),
    (b'id,path\n"a\nb",imgs/a.jpg\n', r"image id 'a\\nb' contains the control character"),
    (b"id,path\na\tb,imgs/a.jpg\n", r"contains the control character '\\t'"),
    ("id,path\ncaf\xe9,imgs/a.jpg\n".encode("latin-1"), r"list.csv:2: not UTF-8 text"),
    (b"id,file\na,imgs/a.jpg\n", r"the header \['id', 'file'\] has no 'path' column"),
    (b"id;path\na;imgs/a.jpg\n", r"columns separated by ';'"),
    (b"id\tpath\na\timgs/a.jpg\n", r"columns separated by '\\t'"),
    (b"", r"no images found"),
    (b"# only a comment\n\n", r"no images found"),
])
def test_bad_list_files_are_refused_with_the_line(imgs, content, message):
    (imgs / "list.csv").write_bytes(content)
    with pytest.raises(DelfxError, match=message):
        list_images(imgs / "list.csv")


@pytest.mark.parametrize("content", [
    b"id, path\na, imgs/a.jpg\nb , imgs/b.jpg \n",           # spaces around names and values
    "id,path\na,imgs/a.jpg\nb,imgs/b.jpg\n".encode("utf-16"),  # UTF-16 with its BOM
    b"\xef\xbb\xbfid,path\na,imgs/a.jpg\nb,imgs/b.jpg\n",      # UTF-8 BOM (Excel)
    b"ID,Path,landmark\na,imgs/a.jpg,x\nb,imgs/b.jpg,\n",      # header case, extra columns
])
def test_list_file_variants_that_are_fine(imgs, content):
    (imgs / "list.csv").write_bytes(content)
    items = list_images(imgs / "list.csv")
    assert [(i.image_id, i.path) for i in items] == [
        ("a", str(imgs / "imgs/a.jpg")), ("b", str(imgs / "imgs/b.jpg"))]


def test_plain_list_with_commas_in_file_names(imgs):
    import shutil
    shutil.copy(imgs / "imgs" / "a.jpg", imgs / "imgs" / "x,y.jpg")
    (imgs / "list.txt").write_text("imgs/x,y.jpg\nimgs/a.jpg\n")
    assert [i.image_id for i in list_images(imgs / "list.txt")] == ["imgs/a.jpg", "imgs/x,y.jpg"]


def test_file_names_that_are_not_utf8_keep_their_bytes_in_the_id(imgs):
    import os
    raw = os.fsencode(str(imgs / "imgs")) + b"/caf\xe9.jpg"
    with open(raw, "wb") as handle:
        handle.write((imgs / "imgs" / "a.jpg").read_bytes())
    items = {i.image_id: i for i in list_images(imgs / "imgs")}
    assert "caf\\xe9.jpg" in items
    assert items["caf\\xe9.jpg"].image_id.encode("utf-8")  # storable
    assert os.fsencode(items["caf\\xe9.jpg"].path) == raw  # and read from the real file


@pytest.mark.slow
def test_non_utf8_file_name_is_extracted_and_stored(imgs, tmp_path):
    """Planning hashed ids as UTF-8 and crashed on such a name; now it is extracted."""
    import os
    from delfx.config import ExtractConfig
    from delfx.extractor.executors import InProcessExecutor
    from delfx.extractor.job import run_extraction
    from delfx.store import FeatureSet
    raw = os.fsencode(str(imgs / "imgs")) + b"/caf\xe9.jpg"
    from PIL import Image
    Image.fromarray(__import__("numpy").random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype="uint8")).save(os.fsdecode(raw), format="JPEG")
    summary = run_extraction(list_images(imgs / "imgs"), ExtractConfig(model="rootsift"),
                             tmp_path / "out", 2, InProcessExecutor(), progress=False)
    assert summary.images_processed == 3 and not summary.shards_failed
    with FeatureSet(tmp_path / "out") as fs:
        assert fs.get("caf\\xe9.jpg").ok
