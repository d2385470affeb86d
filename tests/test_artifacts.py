"""The one header of every artifact: written, checked, old spelling accepted, refusals."""

from __future__ import annotations

import json

import pytest

from delfx.artifacts import check_header, has_format, header, read_json_artifact
from delfx.errors import DelfxError, SchemaVersionError, StoreError


def test_header_and_check():
    data = {**header("delfx-thing", 2), "x": 1}
    assert data["format"] == "delfx-thing" and data["format_version"] == 2
    assert check_header(data, "delfx-thing", {1, 2}, "f.json", what="thing") == 2
    # delfx 0.1.0 spelled it "version"
    assert check_header({"format": "delfx-thing", "version": 1}, "delfx-thing", {1}, "f",
                        what="thing") == 1


@pytest.mark.parametrize("data, message", [
    ({"format": "other", "format_version": 1}, "not a thing"),
    ([1, 2], "not a thing"),
    ({"format": "delfx-thing", "format_version": 3}, "format version 3 is not supported"),
    ({"format": "delfx-thing", "format_version": True}, "format version True"),
    ({"format": "delfx-thing", "format_version": "1"}, "format version '1'"),
    ({"format": "delfx-thing"}, "format version None"),
])
def test_refusals(data, message):
    with pytest.raises(DelfxError, match=message):
        check_header(data, "delfx-thing", {1}, "f.json", what="thing")


def test_error_types_and_version_key():
    with pytest.raises(StoreError):
        check_header({"format": "x"}, "delfx-manifest", {2}, "m", what="manifest",
                     version_key="schema_version", error=StoreError,
                     version_error=SchemaVersionError)
    with pytest.raises(SchemaVersionError, match="schema version 9"):
        check_header({"format": "delfx-manifest", "schema_version": 9}, "delfx-manifest", {2},
                     "m", what="manifest", version_key="schema_version", error=StoreError,
                     version_error=SchemaVersionError)


def test_read_json_artifact(tmp_path):
    path = tmp_path / "a.json"
    with pytest.raises(DelfxError, match="no a.json"):
        read_json_artifact(path, "delfx-thing", {1}, what="thing")
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(DelfxError, match="unreadable thing"):
        read_json_artifact(path, "delfx-thing", {1}, what="thing")
    path.write_text(json.dumps(header("delfx-thing", 1)))
    assert read_json_artifact(path, "delfx-thing", {1}, what="thing")["format_version"] == 1
    assert has_format(path, ("delfx-thing",)) and not has_format(path, ("other",))
    assert not has_format(tmp_path / "missing.json", ("delfx-thing",))
