"""Images to what a model takes: explicit conversion, never silent."""
import numpy as np


def input_tensor(image, shape):
    """The int8 input tensor (H, W, C) of a numpy.uint8 image (H, W, C), or (H, W) for one channel:
    pixel - 128 (docs/blob-format.md). Any other dtype or shape is a ValueError naming the
    expected shape."""
    h, w, c = shape
    expected = "(%d, %d, %d)%s" % (h, w, c, " or (%d, %d)" % (h, w) if c == 1 else "")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError("images must be numpy.uint8 of shape %s, got dtype %s" % (expected, image.dtype))
    if image.ndim == 2 and c == 1:
        image = image[:, :, None]
    if image.shape != (h, w, c):
        raise ValueError("image of shape %s; the model expects %s (tinybridge.preprocess.resize converts)"
                         % (tuple(image.shape), expected))
    return (image ^ 0x80).view(np.int8)


def resize(image, shape):
    """A uint8 (H, W, C) image of `shape` from any image: uint8, or float in [0, 1]; (H, W),
    (H, W, 1) or (H, W, 3). Bilinear resampling (Pillow); gray becomes RGB by repetition and RGB
    becomes gray by ITU-R 601 luma when the shape asks for it."""
    from PIL import Image

    h, w, c = shape
    if c not in (1, 3):
        raise ValueError("shape must have 1 or 3 channels, got %s" % (shape,))
    a = np.asarray(image)
    if a.dtype.kind == "f":
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise ValueError("float images must lie in [0, 1]")
        a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError("images must be uint8 or float in [0, 1], got dtype %s" % a.dtype)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError("images must be (H, W), (H, W, 1) or (H, W, 3), got %s" % (a.shape,))
    pil = Image.fromarray(a).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    out = np.asarray(pil, np.uint8)
    return out[:, :, None] if c == 1 else out
