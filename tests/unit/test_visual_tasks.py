"""The built-in visual tasks: seeded, balanced answers, images that show the answer, rows in the vision-language
formats with their images written beside the JSONL, and the boxed answer reward scoring them."""

import io
import json
from collections import Counter

import pytest
from PIL import Image

from rayalign.data.visual_tasks import COLOURS, DEFAULT_SIZE, generate_visual, to_vl_row, write_rows
from rayalign.rewards.builtin import boxed_answer


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("task", ["shape_count", "shape_colour", "colour"])
def test_seeded_and_the_test_split_differs(task):
    a, b = generate_visual(task, 8, seed=3), generate_visual(task, 8, seed=3)
    assert [e.answer for e in a] == [e.answer for e in b] and [_png(e.image) for e in a] == [_png(e.image) for e in b]
    test = generate_visual(task, 8, seed=3, split="test")
    assert [_png(e.image) for e in test] != [_png(e.image) for e in a]
    assert a[0].image.size == (DEFAULT_SIZE, DEFAULT_SIZE) and a[0].image.mode == "RGB"


@pytest.mark.parametrize("task, answers", [("shape_count", {"1", "2", "3", "4"}), ("shape_colour", set(COLOURS)),
                                           ("colour", set(COLOURS))])
def test_answers_are_balanced_so_no_constant_beats_a_quarter_by_much(task, answers):
    counts = Counter(e.answer for e in generate_visual(task, 800, seed=0))
    assert set(counts) == answers
    assert max(counts.values()) / 800 < 0.3 and min(counts.values()) / 800 > 0.2, counts


def test_the_image_shows_the_answer():
    for ex in generate_visual("shape_count", 50, seed=1):
        assert ex.metadata["shapes"].count("circle") == int(ex.answer) and len(ex.metadata["shapes"]) <= 9
    cell = DEFAULT_SIZE / 3
    for ex in generate_visual("shape_colour", 50, seed=1):
        pixels = Counter(ex.image.getdata())
        # only the square wears the answer's colour, and it is at least (0.55 cell)^2 big (antialiasing aside)
        assert pixels[COLOURS[ex.answer]] >= int(0.55 * cell - 1) ** 2, (ex.answer, pixels.most_common(4))
        assert ex.metadata["shapes"].count("square") == 1
    for ex in generate_visual("colour", 50, seed=1):
        colours = {c for c in Counter(ex.image.getdata()) if c in COLOURS.values()}
        assert colours == {COLOURS[ex.answer]} and len(ex.metadata["shapes"]) == 1


def test_rows_and_images_written_beside_the_jsonl(tmp_path):
    examples = generate_visual("shape_colour", 3, seed=2)
    out = tmp_path / "data" / "train.jsonl"
    out.parent.mkdir()
    images = write_rows(examples, "vl_sft", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert images == tmp_path / "data" / "train_images" and len(rows) == 3
    user, assistant = rows[1]["messages"]
    assert user["role"] == "user" and [p["type"] for p in user["content"]] == ["image", "text"]
    assert user["content"][0]["image"] == "train_images/000001.png"
    with Image.open(out.parent / user["content"][0]["image"]) as image:
        assert _png(image.convert("RGB")) == _png(examples[1].image)  # PNG is lossless
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": examples[1].solution}]}

    prompt = to_vl_row(examples[0], "vl_prompt", "x.png")
    assert prompt["answer"] == examples[0].answer and prompt["task"] == "shape_colour"
    assert prompt["prompt"][0]["content"][0] == {"type": "image", "image": "x.png"}
    with pytest.raises(KeyError, match="unknown vision-language format 'sft'"):
        to_vl_row(examples[0], "sft", "x.png")
    with pytest.raises(KeyError, match="unknown visual task 'letter_count'"):
        generate_visual("letter_count", 1)


@pytest.mark.parametrize("task", ["shape_count", "shape_colour"])
def test_the_boxed_answer_reward_scores_the_solution_not_the_wrong_turn(task):
    for ex in generate_visual(task, 20, seed=4):
        row = to_vl_row(ex, "vl_prompt", "x.png")
        assert boxed_answer(row["prompt"], ex.solution, **{k: v for k, v in row.items() if k != "prompt"}) == 1.0
        assert boxed_answer(row["prompt"], ex.wrong, answer=ex.answer) == 0.0
