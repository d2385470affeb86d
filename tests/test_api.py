"""The Python API's examples (delfx/api.py's doctests) run for real, in a temporary folder."""

from __future__ import annotations

import doctest

import delfx.api


def test_api_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(delfx.api, extraglobs={"tmp": tmp_path}, report=True,
                             optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15
    assert result.failed == 0, f"{result.failed} of the API's examples failed (see above)"
