"""Image input checks and CLIP preprocessing (the pixel work runs in C)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _core


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 (H, W, 3) RGB from any Pillow-readable file (grayscale, palette, RGBA converted;
    EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(p)
        with im:
            return pil_to_rgb8(ImageOps.exif_transpose(im), str(p))
    except UnidentifiedImageError:
        raise ValueError(f"{p} is not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{p} declares an image too large to decode safely ({exc}); "
                         "downscale it first or raise PIL.Image.MAX_IMAGE_PIXELS") from None


def pil_to_rgb8(im, what: str = "image") -> np.ndarray:
    """uint8 (H, W, 3) RGB from a PIL image: 16/32-bit and float grayscale scaled (not clipped),
    transparency composited on white, palette and other modes converted."""
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        return _gray_to_rgb8(np.asarray(im), im.mode, what)
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _gray_to_rgb8(a: np.ndarray, mode: str, what: str) -> np.ndarray:
    """uint8 RGB from a 16/32-bit integer or float grayscale image (Pillow's convert("RGB")
    would clip such values to 255, saturating the image): 16-bit data (mode I;16*, or mode I
    with values above 255) is scaled by 255/65535, float data in [0, 1] by 255."""
    if mode == "F":
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{what} holds NaN or infinite pixel values")
        if a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255
    elif mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a.astype(np.float64) * (255 / 65535)
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def _is_pil(img) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(img, Image.Image)


def from_file_or_pil(img, what: str = "image"):
    """An image file path or a PIL image as uint8 (H, W, 3); anything else unchanged."""
    if isinstance(img, (str, os.PathLike)):
        return read_image(img)
    if _is_pil(img):
        return pil_to_rgb8(img, what)
    return img


def as_uint8_image(img, what: str = "image") -> np.ndarray:
    """Validate one uint8 RGB image (H, W, 3); an image file path or a PIL image is read /
    converted first. Strided and Fortran-ordered arrays are accepted; grayscale and RGBA arrays
    are refused with a hint (files and PIL images of those modes are converted)."""
    img = from_file_or_pil(img, what)
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what} must be a numpy uint8 array (H, W, 3), got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise TypeError(f"{what} must have dtype uint8 (0..255 RGB), got {img.dtype}; "
                        "convert float images in 0..1 with (img * 255).round().astype(np.uint8)")
    if img.ndim != 3 or img.shape[2] != 3:
        hint = ""
        if img.ndim == 3 and img.shape[2] == 4:
            hint = " (drop the alpha channel: img[..., :3])"
        elif img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
            hint = " (grayscale: replicate it, np.dstack([g, g, g]))"
        raise ValueError(f"{what} must be (H, W, 3) RGB, got shape {img.shape}{hint}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {img.shape}")
    return img


def float_to_uint8(img: np.ndarray, what: str = "image") -> np.ndarray:
    """uint8 from float RGB in [0, 1] (rounded to nearest); ValueError outside [0, 1] or NaN."""
    if not np.isfinite(img).all():
        raise ValueError(f"{what} contains NaN or infinity")
    if img.size and (img.min() < 0 or img.max() > 1):
        raise ValueError(f"float {what} must be RGB in [0, 1] (got range "
                         f"{img.min():g}..{img.max():g}); pass uint8 for 0..255 data")
    return np.rint(img * 255).astype(np.uint8)


def as_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """One image as uint8 (H, W, 3): uint8 RGB, float RGB in [0, 1], an image file path or a PIL
    image; the checks and messages of as_uint8_image (which the C bindings share)."""
    if isinstance(image, np.ndarray) and image.dtype.kind == "f":
        image = float_to_uint8(image, what)
    return as_uint8_image(image, what)


def as_uint8_images(images) -> list[np.ndarray]:
    """A batch as a list of (H, W, 3) uint8 images: accepts (H, W, 3), (N, H, W, 3) or a list,
    uint8 or float RGB in [0, 1]; image file paths and PIL images are read / converted."""
    if not isinstance(images, (np.ndarray, list, tuple)):
        images = from_file_or_pil(images)
    elif isinstance(images, (list, tuple)):
        images = [from_file_or_pil(im, f"images[{i}]") for i, im in enumerate(images)]
    if isinstance(images, np.ndarray) and images.dtype.kind == "f":
        images = float_to_uint8(images, "images")
    elif isinstance(images, (list, tuple)):
        images = [float_to_uint8(im, f"images[{i}]") if isinstance(im, np.ndarray)
                  and im.dtype.kind == "f" else im for i, im in enumerate(images)]
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 and images.ndim == 4:
            if images.shape[0] == 0:
                raise ValueError("the image batch is empty (N = 0)")
            return [as_uint8_image(images[i], f"images[{i}]") for i in range(images.shape[0])]
        return [as_uint8_image(images)]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("the image list is empty")
        return [as_uint8_image(im, f"images[{i}]") for i, im in enumerate(images)]
    raise TypeError(f"images must be a uint8 numpy array or a list of them, got {type(images).__name__}")


def resized_shortest(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision Resize(size) output for an (h, w) image: the shorter side becomes size, the
    longer int(size * long / short)."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def clip_preprocess(images: Sequence[np.ndarray], size: int, mean: np.ndarray,
                    std: np.ndarray) -> np.ndarray:
    """(N, 3, size, size) float32: Pillow-exact bicubic resize of the shorter side to `size`,
    centre crop (torchvision's rounding), /255, (x - mean) / std."""
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        nh, nw = resized_shortest(h, w, size)
        if (nh, nw) != (h, w):
            img = _core.resize_u8_pil(img, (nh, nw))
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        out[i] = _core.normalize_u8(img, (top, left, size, size), mean, std, False)
    return out
