"""Built-in verifiable visual tasks with seeds: images drawn with PIL, no downloads (issue 17's data).

- ``shape_count``   "How many circles are in the image?" -> ``... \\boxed{3}`` (1-4 circles among up to 3 squares
                    and triangles; counts drawn evenly, so no constant answer scores above ~1/4)
- ``shape_colour``  "What colour is the square?" -> ``... \\boxed{blue}`` (one square among circles and triangles
                    of the other colours; its colour drawn evenly from four)
- ``colour``        "What colour is the shape?" -> ``... \\boxed{red}`` (one large shape of any kind; the easiest: a
                    tiny model from scratch learns it in minutes, and a model that ignores the image stays at ~1/4)

Shapes sit in a 3 x 3 grid of cells, one per cell with jitter, so none overlap and each is whole. Rows are the
vision-language formats: ``vl_sft`` (a user turn of an image part and a text part, the assistant's answer) and
``vl_prompt`` (that user turn, with ``answer`` and the task's fields as metadata for reward functions, e.g. the
built-in ``boxed_answer``). ``write_rows`` writes the images beside the JSONL and names them relative to it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw

from rayalign.data.formats import VL_FORMATS
from rayalign.data.tasks import SPLITS, boxed
from rayalign.outputs import staged, write_text

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
GRID = 3
MAX_CIRCLES = 4
DEFAULT_SIZE = 112  # 4 x 4 of Qwen2-VL's 28-pixel merged patches


@dataclass(frozen=True)
class VisualExample:
    task: str
    prompt: str             # the user turn's text, after its image
    answer: str             # the verifiable answer, as it appears inside \boxed{}
    solution: str           # a correct assistant turn
    wrong: str              # a plausible incorrect assistant turn
    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)


def _draw(rng: random.Random, size: int, shapes: list[tuple[str, str]], grid: int = GRID) -> Image.Image:
    """``shapes`` ((shape, colour) pairs, at most grid x grid) in distinct random cells of a white image."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    cell = size / grid
    for (shape, colour), slot in zip(shapes, rng.sample(range(grid * grid), len(shapes))):
        extent = rng.uniform(0.55, 0.8) * cell
        x0 = (slot % grid) * cell + rng.uniform(0, cell - extent)
        y0 = (slot // grid) * cell + rng.uniform(0, cell - extent)
        box, fill = (x0, y0, x0 + extent, y0 + extent), COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x0 + extent / 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=fill)
    return image


def shape_count(rng: random.Random, size: int) -> VisualExample:
    count = rng.randint(1, MAX_CIRCLES)
    shapes = [("circle", rng.choice(list(COLOURS))) for _ in range(count)]
    shapes += [(rng.choice(("square", "triangle")), rng.choice(list(COLOURS))) for _ in range(rng.randint(0, 3))]
    rng.shuffle(shapes)
    other = rng.choice([c for c in range(1, MAX_CIRCLES + 1) if c != count])

    def said(n: int) -> str:
        return f"I count {n} circle{'s' if n != 1 else ''}. {boxed(str(n))}"

    return VisualExample(task="shape_count", prompt="How many circles are in the image?", answer=str(count),
                         solution=said(count), wrong=said(other), image=_draw(rng, size, shapes),
                         metadata={"shapes": [s for s, _ in shapes]})


def shape_colour(rng: random.Random, size: int) -> VisualExample:
    colour = rng.choice(list(COLOURS))
    others = [c for c in COLOURS if c != colour]
    shapes = [("square", colour)] + [(rng.choice(("circle", "triangle")), rng.choice(others))
                                     for _ in range(rng.randint(1, 3))]
    rng.shuffle(shapes)
    wrong = rng.choice(others)
    return VisualExample(task="shape_colour", prompt="What colour is the square?", answer=colour,
                         solution=f"The square is {colour}. {boxed(colour)}",
                         wrong=f"The square is {wrong}. {boxed(wrong)}", image=_draw(rng, size, shapes),
                         metadata={"shapes": [s for s, _ in shapes]})


def colour(rng: random.Random, size: int) -> VisualExample:
    shade, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    wrong = rng.choice([c for c in COLOURS if c != shade])
    return VisualExample(task="colour", prompt="What colour is the shape?", answer=shade,
                         solution=f"The shape is {shade}. {boxed(shade)}",
                         wrong=f"The shape is {wrong}. {boxed(wrong)}", image=_draw(rng, size, [(shape, shade)], 1),
                         metadata={"shapes": [shape]})


VISUAL_TASKS: dict[str, Callable[[random.Random, int], VisualExample]] = {
    "shape_count": shape_count,
    "shape_colour": shape_colour,
    "colour": colour,
}


def generate_visual(task: str, n: int, seed: int = 0, split: str = "train",
                    size: int = DEFAULT_SIZE) -> list[VisualExample]:
    """``n`` examples of ``task``, the same for the same seed; ``split="test"`` draws from another stream."""
    if task not in VISUAL_TASKS:
        raise KeyError(f"unknown visual task '{task}' (known: {', '.join(VISUAL_TASKS)})")
    if split not in SPLITS:
        raise KeyError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    rng = random.Random(f"{task}:{seed}" + ("" if split == "train" else f":{split}"))
    return [VISUAL_TASKS[task](rng, size) for _ in range(n)]


def to_vl_row(ex: VisualExample, fmt: str, image: str) -> dict[str, Any]:
    """``ex`` in a vision-language format, its image named by ``image`` (a path, relative to the JSONL's folder)."""
    user = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": ex.prompt}]}]
    if fmt == "vl_sft":
        return {"messages": user + [{"role": "assistant", "content": [{"type": "text", "text": ex.solution}]}]}
    if fmt == "vl_prompt":
        return {"prompt": user, "answer": ex.answer, "task": ex.task, **ex.metadata}
    raise KeyError(f"unknown vision-language format '{fmt}' (known: {', '.join(VL_FORMATS)})")


def write_rows(examples: list[VisualExample], fmt: str, out: Path) -> Path:
    """``out`` (JSONL) and its images as PNGs in ``<out's stem>_images/`` beside it; returns the image folder."""
    images = out.parent / f"{out.stem}_images"
    with staged(images) as tmp:  # replaced whole, as the JSONL is
        tmp.mkdir(parents=True)
        for i, ex in enumerate(examples):
            ex.image.save(tmp / f"{i:06d}.png")
    write_text(out, "".join(json.dumps(to_vl_row(ex, fmt, f"{images.name}/{i:06d}.png")) + "\n"
                            for i, ex in enumerate(examples)))
    return images
