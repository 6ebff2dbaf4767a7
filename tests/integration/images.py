"""Image helpers of the image tests (test_classify.py, test_hostile_requests.py)."""
import io
import struct
import zlib


def encode(im, fmt, **kw):
    """A PIL image encoded in memory (fmt: "JPEG", "PNG", "WEBP", ...)."""
    f = io.BytesIO()
    im.save(f, fmt, **kw)
    return f.getvalue()


def png_chunk(kind, data):
    """One PNG chunk: length, type, data and CRC, for hand-built (hostile) PNG files."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
