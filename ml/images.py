"""Image decoding shared by ingestion and prediction, so both see exactly the same pixels."""

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Decompression bombs: PIL warns above this many pixels and raises above twice as many.
Image.MAX_IMAGE_PIXELS = 64_000_000

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read; the message says why in a user's words."""


def open_image(data: bytes) -> Image.Image:
    """Open (lazily: only the header is read) and check that the bytes are a supported image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.size  # noqa: B018 - touching the header is the check
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("image is too large (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read image: {exc}") from None
    return image


def is_grayscale(image: Image.Image) -> bool:
    return image.mode in GRAY_MODES


def decode_image(data: bytes, *, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """Decode to uint8 H×W×C (C is 1 or 3), first frame only, squashed to size=(height, width).

    Alpha is composited on white; palette and 16-bit images are converted. Raises ImageDecodeError.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = open_image(data)
    try:
        image.seek(0)  # GIF/WebP animations: the first frame
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            array = np.asarray(image, dtype=np.float64)
            span = max(array.max() - array.min(), 1e-9)
            image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), "L")
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and (image.height, image.width) != tuple(size):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=3.0)
        array = np.asarray(image, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)
