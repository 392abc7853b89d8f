# The API surface: models(), configs, images, top-k with labels, properties, check_cores, the detector's dicts.
import numpy as np
import pytest

import mambacv


def test_models_lists_the_shipped_configs():
    ms = mambacv.models()
    names = [m["name"] for m in ms]
    assert "vmamba_tiny_s1l8" in names and "vim_tiny" in names and "mask_rcnn_vmamba_tiny" in names
    s1l8 = ms[names.index("vmamba_tiny_s1l8")]
    assert s1l8["task"] == "classification" and s1l8["input"] == (224, 224) and s1l8["classes"] == 1000
    assert s1l8["checkpoint"] == "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    assert s1l8["parameters"] > 20_000_000
    assert ms[names.index("mask_rcnn_vmamba_tiny")]["task"] == "detection"
    assert mambacv.config_search_path()
    assert mambacv.__version__


def test_random_model_with_labels_and_topk():
    m = mambacv.Model.random("vim_tiny", threads=1)
    assert m.arch == "vim" and m.num_classes == 1000 and len(m.class_names) == 1000
    assert m.input_size == 224 and m.input_spec.size == 224 and m.input_spec.resize_size == 256
    assert m.options == {"device": "cpu", "dtype": "f32", "core": "v0", "threads": 1, "host_cache_mb": -1,
                         "check_finite": False, "batch_group": 0}
    x = mambacv.preprocess(np.full((300, 400, 3), 128, np.uint8), m.input_spec)
    assert x.shape == (1, 3, 224, 224)
    logits = m.classify(np.concatenate([x, x]))
    assert logits.shape == (2, 1000)
    one_at_a_time = mambacv.Model.random("vim_tiny", threads=1, batch_group=1)
    assert one_at_a_time.options["batch_group"] == 1
    np.testing.assert_allclose(one_at_a_time.classify(np.concatenate([x, x])), logits, rtol=1e-5, atol=1e-5)
    top = m.topk(logits, 3)
    assert len(top) == 2 and len(top[0]) == 3
    best = top[0][0]
    assert set(best) == {"index", "label", "prob"}
    assert best["label"] == m.class_names[best["index"]]
    assert best["index"] == int(np.argmax(logits[0]))
    assert abs(best["prob"] - float(np.exp(logits[0] - logits[0].max()).max()
                                    / np.exp(logits[0] - logits[0].max()).sum())) < 1e-6
    one = m.topk(logits[0], 2)  # a single row gives one list
    assert [c["index"] for c in one] == [c["index"] for c in top[0][:2]]
    plain = mambacv.top_k(logits, 2)  # without labels
    assert plain[0][0]["label"] is None and plain[0][0]["index"] == best["index"]
    assert "vim" in repr(m)


def test_issue_example_shape():
    # the call of the README's example, on random weights (the released checkpoint is not shipped)
    m = mambacv.Model.random("vmamba_tiny_s1l8", dtype="bf16", threads=2)
    x = mambacv.preprocess(np.zeros((256, 256, 3), np.uint8), m.input_spec)
    f = m.features(x)
    assert f["stage.3"].shape == (1, 768, 7, 7) and f["stage.3"].dtype == np.float32
    assert f["embedding"].shape == (1, 768)
    assert m.classify(x).shape == (1, 1000)


def test_input_spec():
    s = mambacv.InputSpec(size=160, crop_pct=0.9)
    assert s.size == 160 and s.resize_size == 177
    s.mean = [0.5, 0.5, 0.5]
    assert s.mean == [0.5, 0.5, 0.5]
    x = mambacv.preprocess(np.zeros((100, 120, 3), np.uint8), s)
    assert x.shape == (1, 3, 160, 160)
    expected = ((0.0 - 0.5) / np.array(s.std, np.float64))[None, :, None, None]
    np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=1e-6)


def test_load_image(fixtures):
    im = mambacv.load_image(str(fixtures / "images" / "coffee_small.jpg"))
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    gray = mambacv.load_image(str(fixtures / "images" / "chelsea_gray.png"))
    assert gray.shape[2] == 3 and np.array_equal(gray[..., 0], gray[..., 1])


def test_check_cores(fixtures):
    r = mambacv.check_cores(str(fixtures / "vmamba_v2_mini.json"), dtype="bf16", threads=1)
    assert r["passed"] and r["dtype"] == "bf16" and r["tolerance"] == pytest.approx(4e-2)
    names = [row["tensor"] for row in r["rows"]]
    assert "logits" in names
    for row in r["rows"]:
        assert row["v1_vs_v0"]["finite"] and row["v1_vs_v0"]["rel_l2"] <= r["tolerance"]
    g = mambacv.load_weights(str(fixtures / "vmamba_v2_mini.golden.safetensors"))
    r32 = mambacv.check_cores(str(fixtures / "vmamba_v2_mini.json"), x=g["input"], dtype="f32")
    assert r32["passed"] and r32["top1_total"] == 2


def test_detector_on_an_image(fixtures):
    det = mambacv.Detector.load(str(fixtures / "det" / "maskrcnn_vmamba_mini.json"), threads=2)
    assert det.num_classes == 80 and det.class_names[0] == "person"
    im = mambacv.load_image(str(fixtures / "images" / "coffee_small.jpg"))
    h, w = im.shape[:2]
    dets = det.detect(im, score_thr=0.05, max_per_img=20)
    assert len(dets) <= 20
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        assert d["name"] == det.class_names[d["label"]]
        assert tuple(d["mask"]["size"]) == (h, w)
        assert mambacv.decode_rle(d["mask"]).shape == (h, w)
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
    no_masks = det.detect(im, score_thr=0.05, max_per_img=20, masks=False)
    assert [d["box"] for d in no_masks] == [d["box"] for d in dets]
    assert all(d["mask"] is None for d in no_masks)
    many = det.detect_many([im, im[: h // 2], im], score_thr=0.05, max_per_img=20)
    assert len(many) == 3
    for got, want in zip(many, [dets, det.detect(im[: h // 2], score_thr=0.05, max_per_img=20), dets]):
        assert [d["label"] for d in got] == [d["label"] for d in want]
        assert [d["score"] for d in got] == pytest.approx([d["score"] for d in want], abs=1e-5)
    assert det.detect_many([]) == []
    prof = det.profile(im, score_thr=0.05, max_per_img=20)
    stages = {row["stage"] for row in prof}
    assert {"fpn", "rpn", "box_head"} <= stages and "stage.0" in stages
    assert all(row["calls"] >= 1 and row["seconds"] >= 0 for row in prof)
    assert sum(row["flops"] for row in prof if row["stage"] == "rpn") > 0
