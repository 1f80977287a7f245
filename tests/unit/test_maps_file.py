"""The maps file format and its safe paths, on plain files (no ComfyUI)."""

from __future__ import annotations

import json

import pytest
import torch
from attention_focus.nodes import maps_file as mf
from safetensors.torch import save_file


def _write(path, meta=None, maps=None, raw_meta=None):
    tensors = {"maps": torch.zeros(1, 3, 4, 4) if maps is None else maps}
    md = raw_meta if raw_meta is not None else {mf.META_KEY: json.dumps({"format": mf.FORMAT, **(meta or {})})}
    save_file(tensors, str(path), metadata=md)
    return path


def test_round_trip(tmp_path):
    maps = torch.rand(2, 5, 3, 4)
    p = tmp_path / "m.safetensors"
    mf.save_maps(p, maps, {"model_family": "sd1", "steps": 3})
    got, meta = mf.load_maps(p)
    torch.testing.assert_close(got, maps)
    assert meta["format"] == mf.FORMAT and meta["version"] == mf.VERSION and meta["steps"] == 3
    assert not (tmp_path / "m.safetensors.tmp").exists()


@pytest.mark.parametrize("case,message", [
    ({"raw": {}}, "not an Attention Focus maps file"),
    ({"raw": {mf.META_KEY: "{not json"}}, "damaged metadata (bad JSON"),
    ({"raw": {mf.META_KEY: json.dumps({"format": "other"})}}, "has format 'other'"),
    ({"meta": {"version": 99}}, "written by a newer Attention Focus"),
    ({"meta": {"version": "abc"}}, "metadata field 'version' is \"abc\", but must be a whole number"),
    ({"meta": {"version": True}}, "metadata field 'version'"),
    ({"meta": {"image_size": [1, 2, 3]}}, "'image_size'"),
    ({"meta": {"tokens": [{"pos": 0}]}}, "the token table has 1 entries but the maps have 3 tokens"),
    ({"meta": {"tokens": "abc"}}, "'tokens'"),
    ({"maps": torch.zeros(3, 4)}, "must be a 4-D float tensor"),
])
def test_invalid_files_are_refused_with_the_reason(tmp_path, case, message):
    p = _write(tmp_path / "x.safetensors", case.get("meta"), case.get("maps"), case.get("raw"))
    with pytest.raises(mf.MapsFileError, match=message.replace("(", r"\(").replace("[", r"\[")):
        mf.load_maps(p)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"no safetensors here")
    with pytest.raises(mf.MapsFileError, match="not a readable safetensors file"):
        mf.load_maps(tmp_path / "junk.safetensors")
    with pytest.raises(mf.MapsFileError, match="does not exist"):
        mf.load_maps(tmp_path / "gone.safetensors")


def test_token_table_is_rebuilt_or_refused():
    from attention_focus.nodes.token_table import positional_table

    table = positional_table(3)
    ms = mf.maps_from_file(torch.zeros(1, 3, 2, 2), {"token_table": table.to_json()})
    assert len(ms.tokens) == 3
    with pytest.raises(mf.MapsFileError, match="token table has 3 rows but the maps have 4"):
        mf.maps_from_file(torch.zeros(1, 4, 2, 2), {"token_table": table.to_json()})
    with pytest.raises(mf.MapsFileError, match="token table is damaged"):
        mf.maps_from_file(torch.zeros(1, 3, 2, 2), {"token_table": {"rows": [{"x": 1}], "words": []}})


@pytest.mark.parametrize("prefix,message", [
    ("../up", "may not contain '..'"),
    ("a/../../up", "may not contain '..'"),
    ("/abs/name", "must be a relative name"),
    ("C:/win", "must be a relative name"),
    ("a\\b", "must be a relative name"),
    ("~/home", "must be a relative name"),
    ("./ /.", "has no usable name"),
    ("x" * 300, "shorten it"),
    ("folder" * 50 + "/name", "shorten it"),
])
def test_output_paths_stay_inside_and_name_the_input(tmp_path, prefix, message):
    with pytest.raises(ValueError, match=message) as e:
        mf.safe_output_path(tmp_path, prefix)
    assert str(e.value).startswith("filename_prefix")


def test_output_paths_count_up_and_sanitise(tmp_path):
    a = mf.safe_output_path(tmp_path, "sub/my maps?")
    assert a.parent == tmp_path / "sub" and a.name == "my maps__00001_.safetensors"
    a.write_bytes(b"")
    assert mf.safe_output_path(tmp_path, "sub/my maps?").name == "my maps__00002_.safetensors"
    ok = "y" * (255 - len(".safetensors") - 7)
    assert mf.safe_output_path(tmp_path, ok).name.startswith(ok)
