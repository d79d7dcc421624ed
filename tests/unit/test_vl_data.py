"""Vision-language rows (``vl_sft``, ``vl_prompt``): `rayalign data make` writes a visual task with its images;
loading checks every image before anything trains and pins relative paths to the data file's folder; each bad
row is named with its file, line and field."""

import json

import pytest
from PIL import Image

from rayalign.cli import main
from rayalign.config import DatasetSource
from rayalign.data.formats import check_row
from rayalign.data.loading import load_source, validate_file
from rayalign.errors import DataError

IMG = {"type": "image", "image": "a.png"}
ASK = {"type": "text", "text": "How many circles?"}


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("row, problem", [
    ({"messages": [{"role": "user", "content": [IMG, ASK]}, {"role": "assistant", "content": "3"}]}, None),
    ({"messages": [{"role": "system", "content": "Count."}, {"role": "user", "content": [IMG, ASK]},
                   {"role": "assistant", "content": [{"type": "text", "text": "3"}]}]}, None),
    ({"messages": [{"role": "user", "content": [ASK]}, {"role": "assistant", "content": [IMG]}]},
     ("messages[1].content[0]", "is an image in a assistant turn; images go in system or user turns")),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]},
                   {"role": "assistant", "content": "3"}]},
     ("messages[0].content[0].type", "must be 'text' or 'image', got 'video'")),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": ""}]}, {"role": "assistant", "content": "3"}]},
     ("messages[0].content[0].image", "must name an image: a path, URL or base64")),
    ({"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "3"}]},
     ("messages[0].content", "must be a string or a list of parts, got an empty list")),
    ({"messages": [{"role": "user", "content": [IMG, ASK]}]}, ("messages", "has no assistant message to learn from")),
])
def test_vl_sft_rows(row, problem):
    assert check_row(row, "vl_sft") == ([problem] if problem else [])


def test_vl_prompt_rows():
    assert check_row({"prompt": [{"role": "user", "content": [IMG, ASK]}], "answer": "3"}, "vl_prompt") == []
    assert check_row({"answer": "3"}, "vl_prompt") == [("prompt", "is missing")]
    assert check_row({"prompt": "How many?"}, "vl_prompt") == [("prompt", "must be a non-empty list of messages")]


def test_data_make_writes_a_visual_task_that_loads_with_absolute_image_paths(tmp_path, capsys):
    out = tmp_path / "data" / "shapes.jsonl"
    code, said, _ = _cli(["data", "make", "shape_count", "--n", "5", "--format", "vl_sft", "--out", str(out)], capsys)
    assert code == 0, said
    assert said == f"wrote 5 'vl_sft' rows of shape_count to {out}, their images in {tmp_path / 'data' / 'shapes_images'}\n"
    rows = load_source(DatasetSource(path=str(out)), "vl_sft").to_list()
    image = rows[2]["messages"][0]["content"][0]["image"]
    assert image == str(tmp_path / "data" / "shapes_images" / "000002.png")  # workers elsewhere read the same file
    with Image.open(image) as img:
        assert img.size == (112, 112)
    assert rows[2]["messages"][1]["content"][0]["type"] == "text"
    assert validate_file(str(out), "vl_sft").ok

    code, _, err = _cli(["data", "make", "shape_count", "--format", "sft", "--out", str(tmp_path / "x.jsonl")], capsys)
    assert (code, err) == (2, "error: --format: shape_count is a visual task; its formats are vl_sft, vl_prompt, "
                              "not 'sft'\n")
    code, _, err = _cli(["data", "make", "letter_count", "--format", "vl_sft", "--out", str(tmp_path / "x.jsonl")],
                        capsys)
    assert code == 2 and err.startswith("error: --format: letter_count is a text task")


def test_a_missing_or_torn_image_is_named_with_its_line_before_training(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "torn.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])

    def row(image):
        return json.dumps({"prompt": [{"role": "user", "content": [{"type": "image", "image": image}, ASK]}],
                           "answer": "1"}) + "\n"

    data = tmp_path / "p.jsonl"
    data.write_text(row("ok.png") + row("gone.png") + row("torn.png"))
    with pytest.raises(DataError, match=rf"^{data}:2: field 'prompt\[0\]\.content\[0\]\.image' names "
                                        rf"{tmp_path / 'gone.png'}, which does not exist \(format 'vl_prompt'"):
        load_source(DatasetSource(path=str(data)), "vl_prompt")
    report = validate_file(str(data), "vl_prompt")
    assert report.rows == 3 and report.bad_count == 2
    assert report.bad[1].startswith(f"{data}:3: field 'prompt[0].content[0].image' {tmp_path / 'torn.png'} is not "
                                    "an image PIL can read")
