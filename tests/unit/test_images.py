"""Image references of vision-language rows: paths relative to the data file, data URLs and bare base64 read as
the same image; a missing file, a truncated PNG, bad base64 and a non-string are each named."""

import base64
import io

import pytest
from PIL import Image

from rayalign.data.images import absolute, fitted_size, kind, open_image, problem


def _png_bytes(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_paths_data_urls_and_bare_base64_read_as_the_same_image(tmp_path):
    data = _png_bytes()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    b64 = base64.b64encode(data).decode()
    refs = ["imgs/a.png", str(tmp_path / "imgs" / "a.png"), f"data:image/png;base64,{b64}", b64]
    assert [kind(r) for r in refs] == ["path", "path", "base64", "base64"]
    for ref in refs:
        assert problem(ref, tmp_path) is None, ref
        image = open_image(ref, tmp_path)
        assert image.mode == "RGB" and image.size == (40, 30) and image.getpixel((0, 0)) == (200, 30, 30)
    assert absolute("imgs/a.png", tmp_path) == str(tmp_path / "imgs" / "a.png")
    assert absolute("https://example.com/a.png", tmp_path) == "https://example.com/a.png"
    assert kind("https://example.com/a.png") == "url" and problem("https://example.com/a.png", tmp_path) is None


def test_each_bad_reference_is_named(tmp_path):
    assert problem("imgs/missing.png", tmp_path) == f"names {tmp_path / 'imgs' / 'missing.png'}, which does not exist"
    (tmp_path / "torn.png").write_bytes(_png_bytes()[:60])
    said = problem("torn.png", tmp_path)
    assert said.startswith(f"{tmp_path / 'torn.png'} is not an image PIL can read"), said
    (tmp_path / "notes.txt").write_text("not an image")
    assert problem("notes.txt", tmp_path).startswith(f"{tmp_path / 'notes.txt'} is not an image PIL can read")
    assert problem("data:image/png;base64,@@@@", tmp_path) == "is not valid base64"
    assert problem("data:image/png;base64," + base64.b64encode(b"hello").decode(), tmp_path).startswith(
        "its base64 is not an image PIL can read")
    assert problem(3, tmp_path) == "must be a path, URL or base64 string, got 3"
    with pytest.raises(FileNotFoundError):
        open_image("imgs/missing.png", tmp_path)


def test_an_image_over_the_side_budget_is_downscaled_with_its_aspect(tmp_path):
    assert fitted_size(40, 30, None) == (40, 30) and fitted_size(40, 30, 40) == (40, 30)
    assert fitted_size(40, 30, 20) == (20, 15) and fitted_size(30, 400, 100) == (8, 100)
    (tmp_path / "a.png").write_bytes(_png_bytes())
    small = open_image("a.png", tmp_path, max_side=20)
    assert small.size == (20, 15) and small.getpixel((10, 7)) == (200, 30, 30)
