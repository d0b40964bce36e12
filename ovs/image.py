"""Image input checks and CLIP preprocessing (the pixel work runs in C)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import _core


def as_uint8_image(img, what: str = "image") -> np.ndarray:
    """Validate one uint8 RGB image (H, W, 3). Strided and Fortran-ordered arrays are accepted;
    grayscale and RGBA arrays are refused with a hint (the CLI converts such files)."""
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


def as_uint8_images(images) -> list[np.ndarray]:
    """A batch as a list of (H, W, 3) uint8 images: accepts (H, W, 3), (N, H, W, 3) or a list,
    uint8 or float RGB in [0, 1]."""
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
            img = _core.op_resize_u8_pil(img, (nh, nw))
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        out[i] = _core.op_normalize_u8(img, (top, left, size, size), mean, std, False)
    return out
