"""Image preprocessing with OpenCV: decode (bounded), color, resize, normalize, layout.

`Preprocessor(input_config)` turns an encoded image or raw pixels into one
model-input tensor (no batch dimension) plus the `Transform` that maps model
coordinates back to the pixels the client sent. OpenCV releases the GIL in
decode/resize, so this runs well on worker threads.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

# OpenCV's own limit is a backstop: our header check below refuses oversized
# images before OpenCV allocates anything. Must be set before cv2 is imported.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))
import cv2  # noqa: E402

from edgeinfer.config import InputConfig  # noqa: E402
from edgeinfer.errors import InvalidInput  # noqa: E402

# OpenCV's decoders refuse a side longer than this (CV_IO_MAX_IMAGE_WIDTH/HEIGHT) with an assertion.
MAX_SIDE = 1 << 20


def _cv_reason(exc: Exception) -> str:
    """The reason in an OpenCV error, without its source path: "(-215:Assertion failed) ... in function 'f'"."""
    text = str(exc).strip()
    start = text.find("(-")
    return text[start:] if start >= 0 else text.splitlines()[-1]


# Decoding and resizing happen on our worker threads; OpenCV's own thread pool
# would oversubscribe the cores.
cv2.setNumThreads(1)

PIXEL_FORMATS = {
    # name: (channels, conversion to BGR or None)
    "rgb": (3, cv2.COLOR_RGB2BGR),
    "bgr": (3, None),
    "gray": (1, cv2.COLOR_GRAY2BGR),
    "rgba": (4, cv2.COLOR_RGBA2BGR),
    "bgra": (4, cv2.COLOR_BGRA2BGR),
}


@dataclass(frozen=True)
class Transform:
    """model_xy = original_xy * scale + offset, per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int   # original image width
    height: int  # original image height

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """[N, 4] x1,y1,x2,y2 in model input pixels -> original pixels, clipped."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.offset_y) / self.scale_y
        np.clip(out[:, [0, 2]], 0, self.width, out=out[:, [0, 2]])
        np.clip(out[:, [1, 3]], 0, self.height, out=out[:, [1, 3]])
        return out

    def points_to_original(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] x,y in model input pixels -> original pixels (not clipped)."""
        out = np.empty_like(points, dtype=np.float32)
        out[..., 0] = (points[..., 0] - self.offset_x) / self.scale_x
        out[..., 1] = (points[..., 1] - self.offset_y) / self.scale_y
        return out


IDENTITY = Transform(1.0, 1.0, 0.0, 0.0, 0, 0)


@dataclass(frozen=True)
class Reduced:
    """A JPEG decoded at 1/factor of its size (Preprocessor.decode_for_model): the sent image's size."""

    factor: int
    width: int
    height: int


@dataclass(frozen=True)
class ResizePlan:
    """Where a w x h image lands in the model input, for every resize mode, computed once for both paths.

    The image is scaled to resized_w x resized_h and its top-left corner placed at
    (dx, dy) of the model input: positive offsets pad (letterbox), negative ones crop
    (center-crop). The CPU path (cv2) and the GPU kernel (runtime/gpu/preprocess_kernel.py)
    both follow it, and so does the Transform that maps boxes back.
    """

    width: int
    height: int
    resized_w: int
    resized_h: int
    dx: int
    dy: int

    def transform(self, reduce: int = 1, sent: Optional[tuple[int, int]] = None) -> Transform:
        """model_xy = sent_xy * scale + offset; `reduce`: the image was decoded at 1/reduce of `sent` (w, h)."""
        w, h = sent or (self.width, self.height)
        return Transform(self.resized_w / self.width / reduce, self.resized_h / self.height / reduce,
                         float(self.dx), float(self.dy), w, h)


# --------------------------------------------------------------------------
# Header sniffing: image size before any pixel is allocated
# --------------------------------------------------------------------------

def image_format(data: bytes) -> Optional[str]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) read from the header of a PNG/JPEG/BMP/WebP, or None."""
    fmt = image_format(data)
    try:
        if fmt == "png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "bmp" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "webp" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                b = data[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return w, h
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
    except struct.error:
        return None
    return None


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG's APP1 segment; 1 when absent or unreadable.

    Decoders that honour it (OpenCV's imdecode, nvImageCodec) turn the image before
    anything else sees it; 5-8 swap width and height.
    """
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: no EXIF before the pixels
            return 1
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[i + 10:i + 2 + length])
        i += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:  # Orientation, SHORT
                (value,) = struct.unpack(order + "H", entry[8:10])
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


@dataclass(frozen=True)
class EncodedPlan:
    """How an encoded image becomes the model input without decoding it here (the GPU path).

    width/height: the image as the client sees it (EXIF orientation applied); reduce:
    the decode is taken at 1/reduce of that size (1/2, 1/4, 1/8 for big JPEGs, like
    the CPU path's reduced decode); plan: the resize of the reduced image.
    """

    format: str
    width: int
    height: int
    reduce: int
    plan: ResizePlan

    @property
    def transform(self) -> Transform:
        return self.plan.transform(self.reduce, (self.width, self.height))


# --------------------------------------------------------------------------
# Preprocessor
# --------------------------------------------------------------------------

class Preprocessor:
    """Encoded bytes / raw pixels -> (model tensor without batch dim, Transform)."""

    def __init__(self, cfg: InputConfig, max_pixels: int = 40_000_000, max_bytes: int = 20 << 20):
        self.cfg = cfg
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.width, self.height = cfg.size
        channels = 1 if cfg.color == "gray" else 3
        mean = np.asarray(cfg.mean, np.float32).reshape(-1)
        std = np.asarray(cfg.std, np.float32).reshape(-1)
        # ((v * scale) - mean) / std == v * mul + add, folded once here.
        self._mul = np.broadcast_to(cfg.scale / std, (channels,)).astype(np.float32)
        self._add = np.broadcast_to(-mean / std, (channels,)).astype(np.float32)
        self._identity_norm = bool(np.all(self._mul == 1.0) and np.all(self._add == 0.0))

    # -- decoding -----------------------------------------------------------
    def decode(self, data: bytes) -> np.ndarray:
        """Encoded image -> BGR uint8 HxWx3. Raises InvalidInput with the reason."""
        fmt, _w, _h = self._header(data)
        return self._imdecode(data, fmt, cv2.IMREAD_COLOR)

    def decode_for_model(self, data: bytes) -> tuple[np.ndarray, Optional[Reduced]]:
        """Encoded image -> (BGR uint8 image, how it was reduced or None).

        A JPEG much larger than the model input comes back decoded at 1/k of its size
        (k = 2, 4 or 8), still at least as large as the resize needs; `geometry(img,
        reduced=...)` then maps model coordinates to the sent image's pixels.
        Raises InvalidInput as decode() does.
        """
        fmt, w, h = self._header(data)
        # OpenCV reduces formats other than JPEG by decoding in full and resizing: no saving.
        k = self._reduction(w, h) if self.cfg.reduced_decode and fmt == "jpeg" else 1
        if k == 1:
            return self._imdecode(data, fmt, cv2.IMREAD_COLOR), None
        img = self._imdecode(data, fmt, _REDUCED_FLAGS[k])
        # libjpeg's scaled size is ceil(size / k); EXIF orientation may have swapped the axes.
        rotated = (img.shape[1], img.shape[0]) != (-(-w // k), -(-h // k))
        return img, Reduced(k, h if rotated else w, w if rotated else h)

    def _header(self, data: bytes) -> tuple[str, int, int]:
        """(format, width, height) from the header, checked against the limits before any pixel is decoded."""
        if not data:
            raise InvalidInput("image is empty (0 bytes)")
        if len(data) > self.max_bytes:
            raise InvalidInput(f"image is {len(data)} bytes, over the limit of {self.max_bytes}")
        fmt = image_format(data)
        if fmt is None:
            raise InvalidInput("image bytes are not a JPEG, PNG, BMP or WebP file "
                               f"(starts with {data[:8].hex()})")
        size = image_size(data)
        if size is None:
            raise InvalidInput(f"{fmt.upper()} header is truncated or malformed")
        w, h = size
        if w <= 0 or h <= 0:
            raise InvalidInput(f"{fmt.upper()} header declares an empty image ({w}x{h})")
        if w * h > self.max_pixels:
            raise InvalidInput(f"{fmt.upper()} image is {w}x{h} = {w * h} pixels, "
                               f"over the limit of {self.max_pixels}")
        if max(w, h) > MAX_SIDE:
            raise InvalidInput(f"{fmt.upper()} image is {w}x{h}: a side over {MAX_SIDE} pixels (OpenCV's limit)")
        return fmt, w, h

    @staticmethod
    def _imdecode(data: bytes, fmt: str, flags: int) -> np.ndarray:
        # JPEG checks (end marker, a scan cut short) follow the decode: libjpeg only warns on both.
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error as exc:  # a decoder's own check (e.g. a side over CV_IO_MAX_IMAGE_WIDTH)
            raise InvalidInput(f"{fmt.upper()} image could not be decoded: {_cv_reason(exc)}") from None
        if img is None:
            raise InvalidInput(f"{fmt.upper()} image could not be decoded (corrupt or truncated data)")
        if fmt == "jpeg":
            end = data.rstrip(b"\x00")
            if not end.endswith(b"\xff\xd9"):
                # libjpeg fills a truncated scan with grey and only warns: refuse
                # it rather than answer about half an image.
                raise InvalidInput("JPEG image is truncated (no end-of-image marker)")
            if _grey_corner(img) and _scan_ends_early(end, flags, img):
                raise InvalidInput("JPEG image is truncated (its scan data ends before the image does; "
                                   "an end-of-image marker follows the cut)")
        return img

    def _reduction(self, w: int, h: int) -> int:
        """The largest DCT scale-down (8, 4, 2) that keeps a w x h JPEG at or above its resize target, else 1."""
        # The resize's largest per-axis factor; either orientation (EXIF may rotate the image).
        r = max(self._resize_factor(w, h), self._resize_factor(h, w))
        for k in (8, 4, 2):
            if k * r <= 1.0:
                return k
        return 1

    def _resize_factor(self, w: int, h: int) -> float:
        """The largest of the x and y scale factors _resize applies to a w x h image."""
        nw, nh = self._resized_size(w, h)
        return max(nw / w, nh / h)

    def plan_encoded(self, data: bytes) -> EncodedPlan:
        """The GPU path's plan for an encoded image (header checked against the limits, nothing decoded).

        Same reduction and resize as decode_for_model() + geometry(), so boxes map back the same way.
        Raises InvalidInput as decode() does, and for a JPEG without its end-of-image marker.
        """
        fmt, w, h = self._header(data)
        if fmt == "jpeg":
            if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                raise InvalidInput("JPEG image is truncated (no end-of-image marker)")
            if jpeg_orientation(data) >= 5:
                w, h = h, w
        k = self._reduction(w, h) if self.cfg.reduced_decode and fmt == "jpeg" else 1
        return EncodedPlan(fmt, w, h, k, self.resize_plan(-(-w // k), -(-h // k)))

    def resize_plan(self, w: int, h: int) -> ResizePlan:
        """Where a w x h image lands in the model input (see ResizePlan)."""
        W, H = self.width, self.height
        nw, nh = self._resized_size(w, h)
        if self.cfg.resize == "letterbox":
            return ResizePlan(w, h, nw, nh, (W - nw) // 2, (H - nh) // 2)
        if self.cfg.resize == "center-crop":
            return ResizePlan(w, h, nw, nh, -((nw - W) // 2), -((nh - H) // 2))
        return ResizePlan(w, h, nw, nh, 0, 0)

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """The size _resize scales a w x h image to, before it pads (letterbox) or crops (center-crop)."""
        W, H = self.width, self.height
        mode = self.cfg.resize
        if mode == "stretch":
            return W, H
        if mode == "letterbox":
            r = min(W / w, H / h)
            return max(1, round(w * r)), max(1, round(h * r))
        # center-crop: scale so the crop covers crop_fraction of the shorter side.
        r = max(W / w, H / h) / self.cfg.crop_fraction
        return max(W, round(w * r)), max(H, round(h * r))

    def from_raw(self, height: int, width: int, pixel_format: str, data: bytes) -> np.ndarray:
        """Raw uint8 pixels -> BGR uint8 HxWx3."""
        if pixel_format not in PIXEL_FORMATS:
            raise InvalidInput(f"raw image: pixel format must be one of {sorted(PIXEL_FORMATS)}, got {pixel_format!r}")
        if height <= 0 or width <= 0:
            raise InvalidInput(f"raw image: height and width must be positive, got {height}x{width}")
        if height * width > self.max_pixels:
            raise InvalidInput(f"raw image is {width}x{height} = {width * height} pixels, over the limit of {self.max_pixels}")
        channels, conversion = PIXEL_FORMATS[pixel_format]
        expected = height * width * channels
        if len(data) != expected:
            raise InvalidInput(f"raw image: {width}x{height} {pixel_format} needs {expected} bytes, got {len(data)}")
        img = np.frombuffer(data, np.uint8).reshape(height, width, channels)
        if conversion is not None:
            img = cv2.cvtColor(img, conversion)
        return img

    # -- model input -----------------------------------------------------------
    def geometry(self, bgr: np.ndarray, keep_bgr: bool = False,
                 reduced: Optional[Reduced] = None) -> tuple[np.ndarray, Transform]:
        """BGR uint8 image -> uint8 H,W,C at the model's size (color converted, resized) and the transform.

        keep_bgr: leave a 3-channel image in BGR order (the GPU kernel swaps
        channels as it normalizes; resizing commutes with the swap, so the values match).
        reduced: the image was decoded at a fraction of the sent size (decode_for_model); the
        transform then maps to the sent image's pixels.
        """
        cfg = self.cfg
        h, w = bgr.shape[:2]
        if cfg.color == "rgb" and not keep_bgr:
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        elif cfg.color == "gray":
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        else:
            img = bgr
        img, transform = self._resize(img, w, h)
        if img.ndim == 2:
            img = img[:, :, None]
        if reduced is not None:
            # Decoded pixel i covers sent pixels [k*i, k*(i+1)): sent = decoded * k.
            k = reduced.factor
            transform = Transform(transform.scale_x / k, transform.scale_y / k,
                                  transform.offset_x, transform.offset_y, reduced.width, reduced.height)
        return img, transform  # may be a view (center-crop): callers copy as they lay it out

    def __call__(self, bgr: np.ndarray, reduced: Optional[Reduced] = None) -> tuple[np.ndarray, Transform]:
        """BGR uint8 image -> model tensor (C,H,W or H,W,C) and the coordinate transform (`reduced`: see geometry)."""
        cfg = self.cfg
        img, transform = self.geometry(bgr, reduced=reduced)
        # Reorder while still uint8 (a quarter of the bytes), then convert and
        # normalize in the final layout: same values, ~8x faster than
        # normalizing HWC float32 and transposing that (0.13 vs 0.98 ms, 224x224).
        nchw = cfg.layout == "NCHW"
        img = np.ascontiguousarray(img.transpose(2, 0, 1) if nchw else img)
        if cfg.dtype == "uint8":
            return img, transform
        tensor = img.astype(np.float32)
        if not self._identity_norm:
            shape = (-1, 1, 1) if nchw else (-1,)
            tensor *= self._mul.reshape(shape)
            tensor += self._add.reshape(shape)
        if cfg.dtype == "float16":
            tensor = tensor.astype(np.float16)
        return tensor, transform

    def _resize(self, img: np.ndarray, w: int, h: int) -> tuple[np.ndarray, Transform]:
        W, H = self.width, self.height
        plan = self.resize_plan(w, h)
        nw, nh, dx, dy = plan.resized_w, plan.resized_h, plan.dx, plan.dy
        transform = plan.transform()  # the real per-axis factors after rounding: boxes map back exactly
        sx, sy = nw / w, nh / h
        if self.cfg.resize == "center-crop" and nw * nh > _MAX_CROP_ENLARGEMENT * W * H:
            return self._crop_then_resize(img, w, h, sx, sy, -dx, -dy), transform
        resized = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=_interp(sx, sy))
        if self.cfg.resize == "letterbox":
            out = cv2.copyMakeBorder(resized, dy, H - nh - dy, dx, W - nw - dx, cv2.BORDER_CONSTANT,
                                     value=(self.cfg.pad_value,) * 3)
        elif self.cfg.resize == "center-crop":
            out = resized[-dy:-dy + H, -dx:-dx + W]
        else:
            out = resized
        return out, transform

    def _crop_then_resize(self, img: np.ndarray, w: int, h: int, sx: float, sy: float, x0: int,
                          y0: int) -> np.ndarray:
        """Center-crop of an extreme aspect ratio (a 10000x1 image: 2,560,000x256 resized before the
        224x224 crop, ~2 GB): crop the source to what the model sees first, then resize only that;
        the same pixels as resizing the whole image and cropping it."""
        W, H = self.width, self.height
        left, top = max(0, int(x0 / sx) - 1), max(0, int(y0 / sy) - 1)
        right, bottom = min(w, int(np.ceil((x0 + W) / sx)) + 1), min(h, int(np.ceil((y0 + H) / sy)) + 1)
        part = img[top:bottom, left:right]
        pw, ph = right - left, bottom - top
        if min(sx, sy) < 0.5:  # warpAffine has no area filter: shrink the (small) part first
            pw, ph = max(1, round(pw * sx)), max(1, round(ph * sy))
            part = cv2.resize(part, (pw, ph), interpolation=cv2.INTER_AREA)
        # Part pixel i lands where cv2.resize of the whole image would put it (pixel centres:
        # dst = (src + 0.5) * scale - 0.5), less the crop offset.
        ax, ay = (right - left) * sx / pw, (bottom - top) * sy / ph
        m = np.array([[ax, 0.0, left * sx + 0.5 * ax - 0.5 - x0],
                      [0.0, ay, top * sy + 0.5 * ay - 0.5 - y0]], np.float64)
        return cv2.warpAffine(part, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# center-crop resizes the whole image, then crops; past this many times the crop's pixels it
# crops first (a normal photo's intermediate is ~1.3-2.3x the crop; only extreme aspect ratios pass 8x).
_MAX_CROP_ENLARGEMENT = 8

# cv2.imdecode flags for a JPEG decoded at 1/k scale (libjpeg's DCT scaling), in color.
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _grey_corner(img: np.ndarray) -> bool:
    """Whether a corner pixel is mid-grey: libjpeg leaves the blocks a scan never reached at 128
    (zero coefficients), and the last block in scan order is the bottom-right one (EXIF rotation
    may move it to any corner; chroma upsampling may blend a neighbour in, hence the tolerance)."""
    corners = np.stack([img[-1, -1], img[0, 0], img[0, -1], img[-1, 0]]).astype(np.int16)
    return bool((np.abs(corners - 128) <= 3).all(axis=-1).any())


def _scan_ends_early(data: bytes, flags: int, img: np.ndarray) -> bool:
    """Decode again with filler bytes before the end marker: a complete scan ignores them (libjpeg
    skips bytes between the scan and the next marker), a cut one decodes them where the grey was.
    Runs only for images with a grey corner (_grey_corner), so most images are decoded once."""
    body = data[:-2]
    if body.endswith(b"\xff"):  # cut inside a stuffed 0xFF00: complete it, or the filler reads as a marker
        body += b"\x00"
    probe = cv2.imdecode(np.frombuffer(body + b"\x55" * 256 + b"\xff\xd9", np.uint8), flags)
    return probe is not None and probe.shape == img.shape and not np.array_equal(probe, img)


def _interp(sx: float, sy: float) -> int:
    # Shrinking more than 2x per side: INTER_AREA, which averages every source
    # pixel (no aliasing). Down to 2x, bilinear already reads every source pixel
    # and is ~8x faster than INTER_AREA at a fractional factor (0.34 vs 2.56 ms,
    # 600x400 -> 384x256); enlarging: bilinear.
    return cv2.INTER_AREA if min(sx, sy) < 0.5 else cv2.INTER_LINEAR
