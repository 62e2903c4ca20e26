"""Image sniffing without decoding: which format, and how many pixels decoding
would produce, read from the header, so that a decompression bomb is refused
before TensorFlow allocates anything.

Also the name of the string input that label_image.py's preprocessing for one
setting gets in a loaded graph (:class:`LabelFeed`): the label service feeds
the encoded images to that name, and the inference worker builds the
preprocessing (:mod:`registry.serving.preprocess`) the first time it sees it.
Plain Python: the label service's process decodes nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from registry.errors import InvalidRequest, PayloadTooLarge

FORMATS = ("jpeg", "png", "gif", "bmp")
LABEL_PREFIX = "label_image/"
LABEL_SUFFIX = "/images:0"
MAX_LABEL_SIZE = 16384  # pixels per side an image is resized to, at most


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def _damaged(fmt: str) -> InvalidRequest:
    return InvalidRequest(f"the {fmt.upper()} image is truncated or damaged: send the whole file",
                          code="invalid_image")


def _jpeg(data: bytes) -> ImageInfo:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise _damaged("jpeg")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            if not width or not height:
                break
            return ImageInfo("jpeg", width, height)
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + length
    raise _damaged("jpeg")


def _png(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _damaged("png")
    width, height = struct.unpack(">II", data[16:24])
    return ImageInfo("png", width, height)


def _gif(data: bytes) -> ImageInfo:
    if len(data) < 13:
        raise _damaged("gif")
    width, height, flags = struct.unpack("<HHB", data[6:11])
    i = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while i < len(data):  # count image descriptors: decode_gif decodes every frame
        block = data[i]
        if block == 0x3B:
            break
        if block == 0x21:  # extension: label, then sub-blocks
            i += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW size, sub-blocks
            frames += 1
            if i + 10 > len(data):
                break
            local = data[i + 9]
            i += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            raise _damaged("gif")
        while i < len(data) and data[i]:
            i += data[i] + 1
        i += 1
    if frames == 0:
        raise _damaged("gif")
    return ImageInfo("gif", width, height, frames)


def _bmp(data: bytes) -> ImageInfo:
    if len(data) < 26:
        raise _damaged("bmp")
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return ImageInfo("bmp", abs(width), abs(height))


def sniff(data: bytes, max_pixels: int) -> ImageInfo:
    """Identify an uploaded image and bound the size decoding it would take."""
    if not data:
        raise InvalidRequest("no image: send a JPEG, PNG, GIF or BMP file", code="invalid_image")
    if data.startswith(b"\xff\xd8"):
        info = _jpeg(data)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        info = _png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        info = _gif(data)
    elif data.startswith(b"BM"):
        info = _bmp(data)
    else:
        raise InvalidRequest("not an image TensorFlow can decode: send a JPEG, PNG, GIF or BMP file",
                             code="invalid_image")
    if info.width == 0 or info.height == 0:
        raise _damaged(info.format)
    if info.pixels > max_pixels:
        frames = f" in {info.frames} frames" if info.frames > 1 else ""
        raise PayloadTooLarge(
            f"the image is {info.width}x{info.height}{frames} = {info.pixels:,} pixels decoded; the limit is "
            f"{max_pixels:,} (REGISTRY_MAX_IMAGE_PIXELS): send a smaller image",
            code="image_too_large",
        )
    return info


def _number(value: float) -> str:
    """A float as a graph name may spell it (no '+')."""
    return repr(float(value)).replace("e+", "e")


@dataclass(frozen=True)
class LabelFeed:
    """label_image.py's preprocessing for one setting, feeding one image input of a graph."""

    input: str  # the image input's tensor name, "node:0"
    height: int
    width: int
    mean: float
    std: float

    @property
    def scope(self) -> str:
        node, _, index = self.input.rpartition(":")
        return (f"{LABEL_PREFIX}{self.height}x{self.width}/{_number(self.mean)}/{_number(self.std)}/"
                f"{index}/{node}")

    @property
    def name(self) -> str:
        """The string vector [batch] of encoded images to feed."""
        return self.scope + LABEL_SUFFIX

    @classmethod
    def parse(cls, name: str) -> "LabelFeed | None":
        """The setting a feed name stands for; None for any other name, ValueError for a malformed one."""
        if not (name.startswith(LABEL_PREFIX) and name.endswith(LABEL_SUFFIX)):
            return None
        parts = name[len(LABEL_PREFIX):-len(LABEL_SUFFIX)].split("/", 4)
        try:
            size, mean, std, index, node = parts
            height, width = (int(v) for v in size.split("x"))
            feed = cls(f"{node}:{int(index)}", height, width, float(mean), float(std))
        except ValueError as exc:
            raise ValueError(f"malformed label_image input name {name!r}") from exc
        if not (0 < height <= MAX_LABEL_SIZE and 0 < width <= MAX_LABEL_SIZE) or feed.name != name:
            raise ValueError(f"malformed label_image input name {name!r}")
        return feed
