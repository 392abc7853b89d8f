"""mambacv: Vim (Vision Mamba) and VMamba image models, from the C++ library, with NumPy arrays.

    import mambacv
    m = mambacv.Model.load("vmamba_tiny_s1l8", "vssm1_tiny_0230s_ckpt_epoch_264.pth", dtype="bf16", threads=2)
    x = mambacv.preprocess(mambacv.load_image("cat.jpg"), m.input_spec)   # float32 (1, 3, 224, 224)
    print(m.topk(m.classify(x), 5))

Errors raise mambacv.Error with the library's message.
"""
import os as _os

import numpy as _np

from ._mambacv import (Detector, Error, InputSpec, Model, __version__, check_cores, config_search_path,
                       from_dlpack, load_image, load_weights, models, preprocess, set_config_dirs, top_k)

__all__ = ["Detector", "Error", "InputSpec", "Model", "__version__", "check_cores", "config_search_path",
           "decode_rle", "from_dlpack", "load_image", "load_weights", "models", "preprocess", "set_config_dirs",
           "top_k"]

# An installed package carries the shipped configs in its own folder; $MAMBACV_CONFIG_DIR still comes first.
_configs = _os.path.join(_os.path.dirname(__file__), "configs")
if _os.path.isdir(_configs):
    set_config_dirs([d for d in (_os.environ.get("MAMBACV_CONFIG_DIR"), _configs) if d])


def decode_rle(mask):
    """A COCO RLE mask ({'size': (h, w), 'counts': str}, as Detector.detect gives) -> uint8 (h, w) of 0 / 1."""
    try:
        h, w = (int(v) for v in mask["size"])
        counts = mask["counts"]
    except (TypeError, KeyError, ValueError) as e:
        raise Error("decode_rle: mask: expected {'size': (h, w), 'counts': str}, got %r" % (mask,)) from e
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    runs = []
    i = 0
    # pycocotools' compressed counts: 5 bits per character (offset 48), a continuation bit, sign-extended, and from
    # the fourth run on each value is a difference to the run two before.
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            if i >= len(counts):
                raise Error("decode_rle: mask: counts string ends inside a run")
            c = counts[i] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise Error("decode_rle: mask: runs sum to %d, expected %d x %d = %d" % (sum(runs), h, w, h * w))
    flat = _np.zeros(h * w, dtype=_np.uint8)
    pos = 0
    for j, r in enumerate(runs):
        if j % 2:
            flat[pos:pos + r] = 1
        pos += r
    return flat.reshape(w, h).T.copy()  # column-major runs
