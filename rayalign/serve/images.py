"""The images of an OpenAI chat request (``image_url`` content parts) for a vision-language model's replica.

A part's URL is a ``data:image/...;base64,`` URL (always taken), a ``file://`` URL inside ``serve.image_dir`` (only
when it is set: the server reads no other file), or an ``http(s)://`` URL (only with ``serve.allow_remote_images``:
the server would fetch any address a client names). Each refusal is a 400 naming the part, e.g.
``messages.0.content.1.image_url.url``; nothing reaches the engine.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from PIL import Image

from rayalign.config import ServeConfig
from rayalign.data.images import open_image
from rayalign.data.vl_tokenize import prompt_ids
from rayalign.engines.base import ImagePrompt
from rayalign.serve.protocol import APIError, ChatMessage, TextPart


def _refused(where: str, message: str) -> APIError:
    return APIError(400, f"{where}: {message}", param=where, code="invalid_image_url")


def _local(url: str, where: str, cfg: ServeConfig) -> Path:
    if cfg.image_dir is None:
        raise _refused(where, "file:// URLs are off on this server (serve.image_dir names the directory they may "
                              "come from); send the image as a data: URL")
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).resolve()
    if not path.is_relative_to(Path(cfg.image_dir).resolve()):
        raise _refused(where, f"{path} is outside the directory this server reads images from")
    if not path.is_file():
        raise _refused(where, f"{path} does not exist")
    return path


def request_image(url: str, where: str, cfg: ServeConfig) -> Image.Image:
    """The image a part's URL names, or a 400 naming the part."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "file":
        ref = str(_local(url, where, cfg))
    elif scheme in ("http", "https"):
        if not cfg.allow_remote_images:
            raise _refused(where, "remote image URLs are off on this server (serve.allow_remote_images); send the "
                                  "image as a data: URL")
        ref = url
    elif scheme == "data":
        if not url[5:].startswith("image/") or ";base64," not in url:
            raise _refused(where, "a data URL must be data:image/<type>;base64,<data>")
        ref = url
    else:
        raise _refused(where, "must be a data:image/...;base64 URL, a file:// URL or an http(s) URL")
    try:
        return open_image(ref)
    except Exception as exc:  # noqa: BLE001 - undecodable data, an unreadable file, a failed fetch: the client's
        raise _refused(where, f"cannot read the image ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def chat_prompt(messages: list[ChatMessage], processor, cfg: ServeConfig) -> ImagePrompt:
    """The conversation through the processor's chat template, its images read and their tokens expanded."""
    rendered, images = [], []
    for i, message in enumerate(messages):
        content: str | list[dict] = message.content if isinstance(message.content, str) else []
        for j, part in enumerate([] if isinstance(message.content, str) else message.content or []):
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            else:
                images.append(request_image(part.image_url.url, f"messages.{i}.content.{j}.image_url.url", cfg))
                content.append({"type": "image"})
        rendered.append({"role": message.role, "content": content})
    ids, template = prompt_ids(processor, rendered, images)
    return ImagePrompt(ids, tuple(images), template)
