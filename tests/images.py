"""Test images in every format label_image.py reads, made at test time."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tensorflow as tf



def pixels(seed: int, height: int = 20, width: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bmp(image: np.ndarray) -> bytes:
    """A 24-bit bottom-up BMP."""
    height, width, _ = image.shape
    row = (width * 3 + 3) & ~3
    body = b"".join(image[y, :, ::-1].tobytes().ljust(row, b"\0") for y in range(height - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


def gif(image: np.ndarray) -> bytes:
    """A GIF of ``image`` quantised to the 216-colour web palette, LZW-coded
    without compression (a clear code every 254 pixels keeps codes 9 bits wide)."""
    height, width, _ = image.shape
    levels = (image.astype(int) + 25) // 51
    indices = (levels[..., 0] * 36 + levels[..., 1] * 6 + levels[..., 2]).ravel()
    palette = bytes(v for i in range(256) for v in ((i // 36 * 51, i // 6 % 6 * 51, i % 6 * 51) if i < 216
                                                     else (0, 0, 0)))
    clear, end = 256, 257
    codes = []
    for start in range(0, len(indices), 254):
        codes.append(clear)
        codes.extend(int(i) for i in indices[start:start + 254])
    codes.append(end)
    bits = sum(code << (9 * n) for n, code in enumerate(codes))
    data = bits.to_bytes((9 * len(codes) + 7) // 8, "little")
    blocks = b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255))
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + palette
            + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x08" + blocks + b"\x00;")


def write_images(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "photo.jpg": tf.io.encode_jpeg(pixels(1)).numpy(),
        "chart.png": tf.io.encode_png(pixels(2)).numpy(),
        "scan.bmp": bmp(pixels(3)),
        "palette.gif": gif(pixels(5)),
        "other.png": tf.io.encode_png(pixels(4, 9, 13)).numpy(),
    }
    out = {}
    for name, data in files.items():
        (directory / name).write_bytes(data)
        out[name] = directory / name
    return out


def huge_png_header(width: int, height: int) -> bytes:
    """The start of a PNG that claims enormous dimensions (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0" + b"\0" * 64


def label_image_tensor(image: Path, *, height: int, width: int, mean: float = 0.0,
                       std: float = 255.0) -> np.ndarray:
    """label_image.py's read_tensor_from_image_file, with its own ops (decoder by file extension)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        reader = tf1.read_file(str(image), "file_reader")
        if image.suffix == ".png":
            decoded = tf.image.decode_png(reader, channels=3)
        elif image.suffix == ".gif":
            decoded = tf.squeeze(tf.image.decode_gif(reader))
        elif image.suffix == ".bmp":
            decoded = tf.image.decode_bmp(reader)
        else:
            decoded = tf.image.decode_jpeg(reader, channels=3)
        expanded = tf.expand_dims(tf.cast(decoded, tf.float32), 0)
        resized = tf1.image.resize_bilinear(expanded, [height, width])
        normalized = tf.divide(tf.subtract(resized, [mean]), [std])
        with tf1.Session() as session:
            return session.run(normalized)


def label_image_scores(frozen: Path, image: Path, input_layer: str, output_layer: str, *, height: int,
                       width: int, mean: float = 0.0, std: float = 255.0) -> np.ndarray:
    """What TensorFlow's label_image.py prints scores from, reproduced with its own ops."""
    tf1 = tf.compat.v1
    tensor = label_image_tensor(image, height=height, width=width, mean=mean, std=std)
    model = tf.Graph()
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString(frozen.read_bytes())
    with model.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf1.Session(graph=model) as session:
        results = session.run(f"{output_layer}:0", {f"{input_layer}:0": tensor})
    return np.squeeze(results)
