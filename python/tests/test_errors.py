# Bad input raises mambacv.Error naming the argument and what was expected; nothing crashes the interpreter.
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mambacv


def raises(fn, *words):
    with pytest.raises(mambacv.Error) as e:
        fn()
    msg = str(e.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_error_is_a_runtime_error():
    assert issubclass(mambacv.Error, RuntimeError)


def test_wrong_input_arrays(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    x = g["input"]
    raises(lambda: m.classify(x.astype(np.float64)), "Model.classify: x", "float32", "float64")
    raises(lambda: m.features(x.astype(np.uint8)), "Model.features: x", "float32", "uint8")
    raises(lambda: m.classify(x.astype(">f4")), "Model.classify: x", "float32")
    raises(lambda: m.classify(x[0]), "Model.classify: x", "(N, 3, H, W)", "(3, 64, 64)", "x[None]")
    raises(lambda: m.classify(np.zeros((1, 4, 64, 64), np.float32)), "x", "(N, 3, H, W)", "(1, 4, 64, 64)")
    raises(lambda: m.classify(np.zeros((1, 64, 64, 3), np.float32)), "x", "(N, 3, H, W)")
    raises(lambda: m.classify(np.zeros((0, 3, 64, 64), np.float32)), "x", "non-empty")
    raises(lambda: m.classify(x.tolist()), "Model.classify: x", "list")
    raises(lambda: m.classify(None), "Model.classify: x", "NoneType")
    raises(lambda: m.classify("image.png"), "Model.classify: x", "str")


def test_wrong_logits_and_k(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    logits = m.classify(g["input"])
    raises(lambda: m.topk(logits.astype(np.float64)), "Model.topk: logits", "float32")
    raises(lambda: m.topk(logits[None]), "Model.topk: logits", "(B, classes)")
    raises(lambda: m.topk(logits, 0), "k", ">= 1")
    bad = logits.copy()
    bad[0, 3] = np.nan
    raises(lambda: m.topk(bad), "logit 3")


def test_wrong_images():
    raises(lambda: mambacv.preprocess(np.zeros((32, 32, 3), np.float32)), "preprocess: image", "uint8", "float32")
    raises(lambda: mambacv.preprocess(np.zeros((32, 32, 2), np.uint8)), "preprocess: image", "(H, W, 3)",
           "(32, 32, 2)")
    raises(lambda: mambacv.preprocess(np.zeros((2, 32, 32, 3), np.uint8)), "preprocess: image", "(H, W, 3)")
    raises(lambda: mambacv.preprocess(np.zeros((0, 32, 3), np.uint8)), "preprocess: image", "empty")
    raises(lambda: mambacv.preprocess(np.zeros((32, 32, 3), np.uint8), color="hsv"), "color", "'rgb' or 'bgr'")
    raises(lambda: mambacv.InputSpec(size=0), "size")


def test_missing_files(tmp_path, fixtures):
    missing = str(tmp_path / "missing.png")
    raises(lambda: mambacv.load_image(missing), "load_image: path", missing)
    raises(lambda: mambacv.load_weights(missing), "load_weights: path", missing)
    raises(lambda: mambacv.Model.load("vim_tiny", str(tmp_path / "missing.pth")), "Model.load: weights",
           "missing.pth")
    raises(lambda: mambacv.Model.load(str(tmp_path / "missing.json"), "w.pth"), "Model.load: config",
           "missing.json")
    raises(lambda: mambacv.Model.load("no_such_model"), "Model.load: config", "no_such_model")
    raises(lambda: mambacv.Model.load("vim_tiny"), "Model.load: weights", "vim_t_midclstok_76p1acc.pth")
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("not an image")
    raises(lambda: mambacv.load_image(str(not_an_image)), "load_image: path", "text.png")
    raises(lambda: mambacv.Detector.load(str(fixtures / "vim_mini.json")), "Detector.load: config", "mask_rcnn")


def test_bad_options(fixtures):
    path = str(fixtures / "vim_mini.json")
    raises(lambda: mambacv.Model.load(path, dtype="int8"), "dtype", "'f32', 'f16' or 'bf16'", "int8")
    raises(lambda: mambacv.Model.load(path, core="v2"), "core", "'v0' or 'v1'")
    raises(lambda: mambacv.Model.load(path, device="tpu"), "device", "'cpu' or 'cuda'")
    raises(lambda: mambacv.Model.load(path, threads=-1), "threads")
    raises(lambda: mambacv.Model.load(path, batch_group=-1), "batch_group", "count of images")
    with pytest.raises(TypeError):  # options are keyword-only
        mambacv.Model.load(path, None, "bf16")


def test_classify_on_a_backbone_is_an_error(fixtures):
    m = mambacv.Model.load(str(fixtures / "vmamba_backbone_mini.json"))
    raises(lambda: m.classify(np.zeros((1, 3, 64, 64), np.float32)), "classifier head")


def test_bad_dlpack_inputs():
    raises(lambda: mambacv.from_dlpack(np.zeros((2, 3), np.float64)), "from_dlpack: obj", "float32")
    raises(lambda: mambacv.from_dlpack([1.0]), "from_dlpack: obj", "__dlpack__", "list")
    cap = np.zeros(4, np.float32).__dlpack__()
    mambacv.from_dlpack(cap)
    raises(lambda: mambacv.from_dlpack(cap), "from_dlpack: obj", "already used")


def test_bad_input_never_crashes_the_interpreter(fixtures):
    # The same bad calls in a fresh interpreter, which must exit normally.
    code = textwrap.dedent("""
        import numpy as np, mambacv
        m = mambacv.Model.load(%r)
        bad = [np.zeros((1, 3, 64, 64), np.float64), np.zeros((3, 64, 64), np.float32), None, object(), b"x",
               np.zeros((1, 3, 0, 64), np.float32), np.zeros((1, 3, 1, 1), np.float32)[:, :, :0]]
        n = 0
        for x in bad:
            for f in (m.classify, m.features, m.forward_all):
                try:
                    f(x)
                except (mambacv.Error, TypeError):
                    n += 1
        for f in (lambda: mambacv.load_image(""), lambda: mambacv.preprocess(b"abc"),
                  lambda: mambacv.top_k(np.zeros((1, 0), np.float32))):
            try:
                f()
            except (mambacv.Error, TypeError):
                n += 1
        print("handled", n)
    """) % str(fixtures / "vim_mini.json")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "handled %d" % (7 * 3 + 3), r.stdout + r.stderr
