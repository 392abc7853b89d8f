# The fixtures' goldens (the upstream PyTorch code's outputs) through the module, within the C++ tests' tolerances.
import numpy as np
import pytest

import mambacv
from conftest import golden, rel_l2

F32_TOL = 1e-4  # fixtures README: fp32 relative L2 on logits, features and every stage output


def nhwc_to_nchw(t):
    return np.ascontiguousarray(t.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("name", ["vim_mini", "vim_stride8_mini"])
def test_vim_matches_golden(fixtures, name):
    m = mambacv.Model.load(str(fixtures / (name + ".json")))
    g = golden(fixtures, name)
    out = m.forward_all(g["input"])
    for n in ("logits", "features", "patch_embed", "layers.0.mixer"):
        assert n in out, n
        assert out[n].dtype == np.float32
        assert rel_l2(out[n], g[n]) <= F32_TOL, n
    assert rel_l2(m.classify(g["input"]), g["logits"]) <= F32_TOL
    f = m.features(g["input"])
    assert rel_l2(f["cls"], g["features"]) <= F32_TOL
    assert f["tokens"].ndim == 4 and f["tokens"].shape[0] == g["input"].shape[0]


@pytest.mark.parametrize("name", ["vmamba_v0_mini", "vmamba_v2_mini", "vmamba_v2_ratio1_mini",
                                  "vmamba_backbone_mini"])
@pytest.mark.parametrize("core", ["v0", "v1"])
def test_vmamba_matches_golden(fixtures, name, core):
    m = mambacv.Model.load(str(fixtures / (name + ".json")), core=core)
    g = golden(fixtures, name)
    out = m.forward_all(g["input"])
    for n, ref in g.items():
        if n == "input":
            continue
        assert n in out, n
        assert rel_l2(out[n], ref) <= F32_TOL, n
    if m.num_classes > 0:
        assert rel_l2(m.classify(g["input"]), g["logits"]) <= F32_TOL
    # features(): stage maps NCHW whatever the module's own layout
    f = m.features(g["input"])
    for s in ("stage.0", "stage.3") if m.num_classes > 0 else ("features.0", "features.3"):
        ref = g[s]
        if f[s].shape != ref.shape:
            ref = nhwc_to_nchw(ref)
        assert rel_l2(f[s], ref) <= F32_TOL, s


def test_pth_checkpoint_gives_golden_logits(fixtures):
    m = mambacv.Model.load(str(fixtures / "vim_mini.json"), str(fixtures / "vim_mini.pth"))
    g = golden(fixtures, "vim_mini")
    assert rel_l2(m.classify(g["input"]), g["logits"]) <= F32_TOL


@pytest.mark.parametrize("dtype,tol", [("f16", 1e-2), ("bf16", 4e-2)])
def test_reduced_precision_within_tolerance(fixtures, dtype, tol):
    for name in ("vim_mini", "vmamba_v2_mini"):
        m = mambacv.Model.load(str(fixtures / (name + ".json")), dtype=dtype)
        g = golden(fixtures, name)
        logits = m.classify(g["input"])
        assert np.isfinite(logits).all()
        assert rel_l2(logits, g["logits"]) <= tol, name


def test_preprocess_matches_upstream_transform(fixtures):
    g = mambacv.load_weights(str(fixtures / "images" / "preprocess.golden.safetensors"))
    std = np.array([0.229, 0.224, 0.225], dtype=np.float64)[:, None, None]
    for name, ref in g.items():
        x = mambacv.preprocess(mambacv.load_image(str(fixtures / "images" / name)), mambacv.InputSpec())
        assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
        levels = np.abs(x[0].astype(np.float64) - ref) / (1 / 255 / std)  # in 8-bit levels
        assert (levels <= 1.0 + 1e-3).mean() >= 0.99, name
        assert levels.max() <= 3.0 + 1e-3, name


def match_detections(gb, gl, b, l):
    """Golden detections matched by one of the same label with IoU >= 0.9 and |score difference| <= 0.01."""
    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0
    used, match = set(), []
    for i in range(len(gb)):
        best = -1
        for j in range(len(b)):
            if j in used or l[j] != gl[i] or abs(b[j][4] - gb[i][4]) > 0.01 or iou(b[j], gb[i]) < 0.9:
                continue
            best = j
            break
        if best >= 0:
            used.add(best)
        match.append(best)
    return match


def test_detector_matches_golden(fixtures):
    det = mambacv.Detector.load(str(fixtures / "det" / "maskrcnn_vmamba_mini.json"))
    g = mambacv.load_weights(str(fixtures / "det" / "maskrcnn_vmamba_mini.golden.safetensors"))
    h, w = 250, 300  # the fixture's img_shape
    out = det.forward_all(g["input"], h, w)
    for n in ("features.0", "features.3", "fpn.0", "fpn.4"):
        assert rel_l2(out[n], g[n]) <= F32_TOL, n
    dets = det.detect_input(g["input"], h, w)
    boxes = np.array([d["box"] + (d["score"],) for d in dets], dtype=np.float64).reshape(-1, 5)
    labels = [d["label"] for d in dets]
    match = match_detections(g["det_bboxes"], g["det_labels"], boxes, labels)
    assert sum(j >= 0 for j in match) >= 0.95 * len(match)
    for i, j in enumerate(match):
        if j < 0:
            continue
        mask = mambacv.decode_rle(dets[j]["mask"])
        assert mask.shape == (h, w)
        ref = g["det_masks"][i].astype(bool)
        inter = np.logical_and(mask, ref).sum()
        union = np.logical_or(mask, ref).sum()
        assert union == 0 or inter / union >= 0.9, i
        # the RLE is the library's own mask, pixel for pixel
        np.testing.assert_array_equal(mask, out["det_masks"][j])
    for d in dets:
        assert set(d) == {"label", "name", "score", "box", "mask"}
        assert isinstance(d["mask"]["counts"], str) and tuple(d["mask"]["size"]) == (h, w)
