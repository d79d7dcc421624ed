"""Image references in vision-language rows (``vl_sft``, ``vl_prompt``): what an image part's ``image`` names.

- a local path, relative to the data file's folder (as ``rayalign data make`` writes them) or absolute;
- an ``http(s)://`` URL (fetched when the image is read; not fetched by the checks, which run offline);
- a ``data:image/...;base64,`` URL, or bare base64 of an image file.

``problem`` says what is wrong with one reference before anything trains (a missing or unreadable file, base64
that is not an image); ``absolute`` pins a relative path to its data file's folder, so a Ray worker with another
working directory reads the same file; ``open_image`` reads any of them as RGB.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.request
from pathlib import Path

from PIL import Image, UnidentifiedImageError

URL_TIMEOUT_S = 30
BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")  # png jpeg gif webp bmp tiff


def kind(ref: str) -> str:
    """``url``, ``base64`` or ``path``."""
    if ref.startswith(("http://", "https://")):
        return "url"
    if ref.startswith("data:") or _bare_base64(ref):
        return "base64"
    return "path"


def _bare_base64(ref: str) -> bool:
    """Base64 of an image file (its first bytes are an image format's signature), not a path that looks alike."""
    if len(ref) < 64 or not BASE64.fullmatch(ref[:4096]):
        return False
    try:
        head = base64.b64decode(ref[:64], validate=True)
    except (binascii.Error, ValueError):
        return False
    return head.startswith(SIGNATURES)


def _decode(ref: str) -> bytes:
    payload = ref.split(",", 1)[1] if ref.startswith("data:") else ref
    return base64.b64decode(payload, validate=True)


def absolute(ref: str, base: Path) -> str:
    """``ref`` with a relative path made absolute against ``base`` (the data file's folder); others as they are."""
    if kind(ref) != "path" or Path(ref).is_absolute():
        return ref
    return str((base / ref).resolve())


def _read(ref: str) -> bytes:
    """The bytes of a URL or base64 reference."""
    if kind(ref) == "url":
        with urllib.request.urlopen(ref, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (http(s) only, above)
            return response.read()
    return _decode(ref)


def source(ref: str, base: Path | None = None) -> str | io.BytesIO:
    """What ``PIL.Image.open`` takes for ``ref``: a file's path (opened lazily: its size reads the header only),
    or the bytes of a URL or base64."""
    if kind(ref) == "path":
        return absolute(ref, base) if base is not None else ref
    return io.BytesIO(_read(ref))


def open_image(ref: str, base: Path | None = None, max_side: int | None = None) -> Image.Image:
    """The image ``ref`` names, decoded, as RGB; with ``max_side``, downscaled to fit it (``fitted_size``)."""
    with Image.open(source(ref, base)) as image:
        image = image.convert("RGB")
    size = fitted_size(image.width, image.height, max_side)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so the longer side is at most ``max_side``; unchanged when it fits."""
    longest = max(width, height)
    if max_side is None or longest <= max_side:
        return width, height
    return max(1, round(width * max_side / longest)), max(1, round(height * max_side / longest))


def problem(ref, base: Path) -> str | None:
    """What is wrong with the reference ``ref`` of a row in a file in folder ``base``; None when it reads as an
    image (URLs are not fetched here)."""
    if not isinstance(ref, str) or not ref.strip():
        return f"must be a path, URL or base64 string, got {ref!r}"
    k = kind(ref)
    if k == "url":
        return None
    path = absolute(ref, base)
    try:
        data = _decode(ref) if k == "base64" else Path(path).read_bytes()
    except (binascii.Error, ValueError):
        return "is not valid base64"
    except FileNotFoundError:
        return f"names {path}, which does not exist"
    except OSError as exc:
        return f"names {path}, which cannot be read ({exc.strerror or exc})"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()  # the whole file: a truncated PNG fails here, not in a worker mid-run
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        what = "its base64" if k == "base64" else path
        return f"{what} is not an image PIL can read ({type(exc).__name__}: {exc})"
    return None
