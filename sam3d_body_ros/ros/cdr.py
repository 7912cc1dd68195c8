"""Plain little-endian CDR (XCDR1, as rmw serialises ROS 2 messages), written and read with numpy: large outputs
(mesh markers, point clouds) are published as bytes and images are taken in as bytes, without Python message
objects. Alignment is relative to the body, after the 4-byte encapsulation header."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from std_msgs.msg import Header

ENCAPSULATION_LE = b"\x00\x01\x00\x00"


class CdrWriter:
    """Keeps the pieces and joins them once at the end (arrays are referenced, not copied, until then)."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = [ENCAPSULATION_LE]
        self.size = 0  # body bytes so far

    def _put(self, data: bytes | memoryview) -> None:
        self.parts.append(data)
        self.size += len(data)

    def align(self, n: int) -> None:
        if pad := -self.size % n:
            self._put(bytes(pad))

    def i32(self, *values: int) -> None:
        self.align(4)
        self._put(struct.pack(f"<{len(values)}i", *values))

    def u32(self, *values: int) -> None:
        self.align(4)
        self._put(struct.pack(f"<{len(values)}I", *values))

    def u8(self, value: int) -> None:
        self._put(struct.pack("<B", value))

    def f32(self, values) -> None:
        self.align(4)
        self._put(np.asarray(values, "<f4").tobytes())

    def f64(self, values) -> None:
        self.align(8)
        arr = np.ascontiguousarray(values, "<f8")
        if arr.size:
            self._put(memoryview(arr).cast("B"))

    def raw(self, data: bytes | memoryview | np.ndarray) -> None:
        """Bytes as they are (a uint8 sequence's payload)."""
        if isinstance(data, np.ndarray):
            data = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        self._put(data)

    def string(self, text: str) -> None:
        data = text.encode()
        self.u32(len(data) + 1)
        self._put(data + b"\x00")

    def boolean(self, value: bool) -> None:
        self._put(b"\x01" if value else b"\x00")

    def header(self, header: Header) -> None:
        self.i32(header.stamp.sec)
        self.u32(header.stamp.nanosec)
        self.string(header.frame_id)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class CdrReader:
    """Reads fields in order from a serialized message (bytes or memoryview), without copying arrays."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.buf = memoryview(data)
        if len(self.buf) < 4 or bytes(self.buf[:2]) != ENCAPSULATION_LE[:2]:
            raise ValueError("not little-endian plain CDR")
        self.pos = 4

    def align(self, n: int) -> None:
        self.pos += -(self.pos - 4) % n

    def u32(self) -> int:
        self.align(4)
        (value,) = struct.unpack_from("<I", self.buf, self.pos)
        self.pos += 4
        return value

    def i32(self) -> int:
        self.align(4)
        (value,) = struct.unpack_from("<i", self.buf, self.pos)
        self.pos += 4
        return value

    def u8(self) -> int:
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def string(self) -> str:
        n = self.u32()
        text = bytes(self.buf[self.pos:self.pos + n - 1]).decode()
        self.pos += n
        return text

    def octets(self) -> memoryview:
        """A uint8 sequence, as a view into the message."""
        n = self.u32()
        if self.pos + n > len(self.buf):
            raise ValueError(f"sequence of {n} bytes runs past the message ({len(self.buf) - self.pos} left)")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def header(self) -> Header:
        header = Header()
        header.stamp.sec = self.i32()
        header.stamp.nanosec = self.u32()
        header.frame_id = self.string()
        return header


@dataclass
class RawImage:
    """A sensor_msgs/Image read from its serialized bytes: the same field names, `data` a view into the message."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


def read_image(serialized: bytes | memoryview) -> RawImage:
    """sensor_msgs/Image fields from CDR bytes (what a raw subscription delivers); pixels are not copied."""
    r = CdrReader(serialized)
    header = r.header()
    height, width = r.u32(), r.u32()
    encoding = r.string()
    is_bigendian = r.u8()
    step = r.u32()
    return RawImage(header, height, width, encoding, is_bigendian, step, r.octets())
