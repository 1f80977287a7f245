"""The viewer's data: default words, chips, 8-bit quantisation, the view file and the route's file names."""

from __future__ import annotations

import torch
from attention_focus.nodes.capture_store import MapSet, word_maps
from attention_focus.nodes.token_table import TokenRow, TokenTable, Word
from attention_focus.nodes.viewer_data import (
    Frames,
    build_view,
    dequantize,
    quantize,
    read_view,
    view_words,
    write_view,
)
from attention_focus.nodes.viewer_routes import resolve_name
from attention_focus.nodes.word_choice import content_words, is_function_word


def _table(words: list[str]) -> TokenTable:
    """BOS, one token per word, EOS (positions 1..n)."""
    rows = [TokenRow(0, "<bos>", -1, 1.0, 0, True, 0)]
    ws = []
    for i, w in enumerate(words):
        rows.append(TokenRow(i + 1, w, i, 1.0, 1, False, 0))
        ws.append(Word(i, w, (i + 1,)))
    rows.append(TokenRow(len(words) + 1, "<eos>", -1, 1.0, 0, True, 0))
    return TokenTable(rows, ws, text=" ".join(words))


PROMPT = "a photo of a cat wearing a red wizard hat".split()


def test_function_words_are_left_out_of_the_default_but_kept_when_nothing_else_remains():
    assert is_function_word("a") and is_function_word("OF") and not is_function_word("cat")
    assert [w.text for w in content_words(_table(PROMPT))] == ["photo", "cat", "wearing", "red", "wizard", "hat"]
    assert [w.text for w in content_words(_table(["a", "of", "the"]))] == ["a", "of", "the"]


def test_chips_put_selected_words_first_then_content_then_function_words_each_once():
    table = _table(PROMPT)
    chips = view_words(table, ["red wizard hat", "cat"])
    assert [c.text for c in chips] == ["red wizard hat", "cat", "photo", "wearing", "red", "wizard", "hat",
                                       "a", "of", "a", "a"]
    assert [c.selected for c in chips][:3] == [True, True, False]
    assert chips[0].positions == (8, 9, 10) and chips[1].positions == (5,)
    assert [c.function for c in chips[-3:]] == [True, True, True]


def test_quantisation_keeps_each_map_within_half_a_step_of_its_range():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 5, 7, generator=g) * torch.tensor([1.0, 1e-3, 0.0])[None, :, None, None]
    q, lo, hi = quantize(maps)
    assert q.dtype == torch.uint8 and q.shape == maps.shape and lo.shape == hi.shape == (2, 3)
    back = dequantize(q, lo, hi)
    step = (hi - lo)[..., None, None] / 255
    assert torch.all((back - maps).abs() <= step / 2 + 1e-7)
    assert torch.all(q[:, 2] == 0)  # a constant map: zeros, no NaN


def test_view_holds_word_shares_and_optional_history(tmp_path):
    table = _table(PROMPT)
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(1, len(table), 4, 6, generator=g) * 3  # summed over 3 evaluations
    ms = MapSet(maps, table, {"steps": 3, "model_family": "sd1", "branch": "positive"})
    chips = view_words(table, ["cat"])
    tensors, header = build_view(ms, chips, colormap="turbo", opacity=0.5, normalization="per word",
                                 image_size=(32, 48))
    assert set(tensors) == {"words"} and header["frames"] == {}
    assert header["evaluations"] == 3 and header["latent"] == [4, 6] and header["image_size"] == [32, 48]
    assert len(bytes.fromhex(header["lut"])) == 256 * 3
    share = word_maps(maps, [c.positions for c in chips]) / 3
    got = dequantize(tensors["words"], torch.tensor(header["lo"]), torch.tensor(header["hi"]))
    assert torch.allclose(got, share, atol=float(share.max()) / 255)

    # history frames: (batch, frames, tokens, h, w) → (batch, frames, words, h, w) on their own scales
    hist = torch.rand(1, 2, len(table), 4, 6, generator=g)
    tensors, header = build_view(ms, chips, colormap="gray", opacity=0.5, normalization="shared",
                                 image_size=(32, 48), frames={"steps": Frames(["1", "2"], hist)})
    assert tensors["frames.steps"].shape == (1, 2, len(chips), 4, 6)
    assert header["frames"]["steps"]["labels"] == ["1", "2"]
    assert torch.tensor(header["frames"]["steps"]["hi"]).shape == (1, 2, len(chips))

    # written files: the view, the raw maps (float16, Save Maps format), one picture per image
    from attention_focus.nodes.maps_file import load_maps

    record = write_view(tmp_path, ms, torch.rand(1, 32, 48, 3, generator=g), tensors, header)
    folder = tmp_path / "attention_focus_view"
    vid = record["id"]
    assert record["words"][0] == "cat" and record["batch"] == 1
    back, head = read_view(folder / f"{vid}.view.safetensors")
    assert head["id"] == vid and torch.equal(back["words"], tensors["words"])
    raw, meta = load_maps(folder / head["maps_file"])
    assert torch.allclose(raw, maps, rtol=1e-3) and meta["token_table"]["words"][4]["text"] == "cat"
    assert (folder / f"{vid}.0.jpg").stat().st_size > 0
    assert resolve_name(tmp_path, f"{vid}.view.safetensors") == folder / f"{vid}.view.safetensors"
    assert resolve_name(tmp_path, f"{vid}.0.jpg") is not None


def test_route_serves_only_view_files():
    for bad in ["../secret", "x.view.safetensors", "0" * 32 + ".view.safetensors/../../a",
                "0" * 32 + ".png", "", "0" * 31 + ".view.safetensors"]:
        assert resolve_name("/nonexistent", bad) is None


def test_compare_puts_both_runs_on_one_scale():
    from attention_focus.nodes.compare_node import joint_normalize

    a = torch.tensor([[[0.0, 1.0]], [[2.0, 4.0]]])  # (2 words, 1, 2)
    b = torch.tensor([[[0.5, 3.0]], [[2.0, 2.0]]])
    na, nb = joint_normalize(a, b, "per word")
    assert torch.allclose(na[0], torch.tensor([[0.0, 1 / 3]])) and torch.allclose(nb[0], torch.tensor([[0.5 / 3, 1.0]]))
    assert torch.allclose(na[1], torch.tensor([[0.0, 1.0]])) and torch.allclose(nb[1], torch.tensor([[0.0, 0.0]]))
    na, nb = joint_normalize(a, b, "shared")
    assert na.max() == 1 and torch.allclose(nb[0], torch.tensor([[0.125, 0.75]]))


def test_only_the_newest_views_are_kept(tmp_path):
    import os

    from attention_focus.nodes.viewer_data import prune

    folder = tmp_path / "attention_focus_view"
    folder.mkdir()
    for i in range(5):
        vid = f"{i:032x}"
        for suffix in (".view.safetensors", ".maps.safetensors", ".0.jpg"):
            (folder / f"{vid}{suffix}").write_bytes(b"x")
            os.utime(folder / f"{vid}{suffix}", (1000 + i, 1000 + i))
    prune(folder, keep=2)
    assert sorted(p.name.split(".")[0][-1] for p in folder.glob("*.view.safetensors")) == ["3", "4"]
    assert len(list(folder.iterdir())) == 6
