# Arrays from PyTorch (tensor.numpy(), DLPack) and OpenCV (cv2.imread) work directly.
import numpy as np
import pytest

import mambacv
from conftest import rel_l2


def handed():
    return mambacv._mambacv._last_input()


def test_torch_tensors(vmamba_v2_mini):
    torch = pytest.importorskip("torch")
    m, g = vmamba_v2_mini
    ref = m.classify(g["input"])
    t = torch.from_numpy(np.array(g["input"], copy=True))
    # tensor.numpy() shares the tensor's memory, which the library then reads in place
    np.testing.assert_array_equal(m.classify(t.numpy()), ref)
    assert handed() == (t.data_ptr(), False)
    # the tensor itself: DLPack, zero-copy
    np.testing.assert_array_equal(m.classify(t), ref)
    assert handed() == (t.data_ptr(), False)
    v = mambacv.from_dlpack(t)
    assert v.ctypes.data == t.data_ptr() and v.shape == tuple(t.shape)
    # a permuted (non-contiguous) tensor is copied once
    nhwc = t.permute(0, 2, 3, 1).contiguous()
    x = nhwc.permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    np.testing.assert_array_equal(m.classify(x), ref)
    assert handed()[1]
    # results go back to torch without a copy
    out = m.classify(t)
    assert torch.from_numpy(out).data_ptr() == out.ctypes.data


def test_torch_errors(vmamba_v2_mini):
    torch = pytest.importorskip("torch")
    m, g = vmamba_v2_mini
    with pytest.raises(mambacv.Error, match="Model.classify: x.*float32"):
        m.classify(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(mambacv.Error, match="Model.classify: x.*__dlpack__"):
        m.classify(torch.zeros(1, 3, 64, 64, requires_grad=True))
    with pytest.raises(mambacv.Error, match=r"Model.classify: x.*\(N, 3, H, W\)"):
        m.classify(torch.zeros(3, 64, 64))


def test_the_dlpack_producer_stays_alive(vmamba_v2_mini):
    torch = pytest.importorskip("torch")
    m, g = vmamba_v2_mini
    t = torch.from_numpy(np.array(g["input"], copy=True))
    v = mambacv.from_dlpack(t)
    del t  # v keeps the tensor's storage
    np.testing.assert_array_equal(m.classify(v), m.classify(g["input"]))


def test_opencv_images(fixtures):
    cv2 = pytest.importorskip("cv2")
    path = str(fixtures / "images" / "chelsea.png")
    bgr = cv2.imread(path)
    assert bgr.dtype == np.uint8 and bgr.ndim == 3
    ref = mambacv.preprocess(mambacv.load_image(path))
    np.testing.assert_array_equal(mambacv.preprocess(bgr, color="bgr"), ref)
    np.testing.assert_array_equal(mambacv.preprocess(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), ref)
    # a crop (rows a full image row apart) and a BGRA image
    crop = bgr[20:220, 30:250]
    assert not crop.flags.c_contiguous
    np.testing.assert_array_equal(mambacv.preprocess(crop, color="bgr"),
                                  mambacv.preprocess(np.ascontiguousarray(crop), color="bgr"))
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(mambacv.preprocess(bgra, color="bgr"), ref)
    # channel-reversed view (negative stride): copied, same pixels as RGB
    np.testing.assert_array_equal(mambacv.preprocess(bgr[:, :, ::-1]), ref)
    gray = cv2.imread(str(fixtures / "images" / "chelsea_gray.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(mambacv.preprocess(gray), mambacv.preprocess(gray[:, :, None]))


def test_upstream_torch_reference(fixtures):
    # Where PyTorch is present: the fixture's checkpoint read by torch itself, and the upstream output written in
    # the fixture, against the module. Pieces of the upstream model (Vim's patch embedding, a Conv2d with stride 16,
    # and its head, a Linear on the normed class token) are also evaluated in torch on the checkpoint's weights.
    torch = pytest.importorskip("torch")
    ckpt = torch.load(str(fixtures / "vim_mini.pth"), map_location="cpu")
    sd = ckpt["model"]
    # the checkpoint torch reads holds the weights the fixture's goldens were produced with
    ours = mambacv.load_weights(str(fixtures / "vim_mini.weights.safetensors"))
    for k in ("patch_embed.proj.weight", "head.weight", "pos_embed", "cls_token"):
        np.testing.assert_array_equal(sd[k].numpy(), ours[k])
    g = mambacv.load_weights(str(fixtures / "vim_mini.golden.safetensors"))
    m = mambacv.Model.load(str(fixtures / "vim_mini.json"), str(fixtures / "vim_mini.pth"))
    x = torch.from_numpy(g["input"])
    out = m.forward_all(x)
    logits = torch.from_numpy(m.classify(x))
    upstream = torch.from_numpy(g["logits"])
    assert (torch.linalg.norm(logits - upstream) / torch.linalg.norm(upstream)).item() <= 1e-4
    assert torch.equal(logits.argmax(1), upstream.argmax(1))
    with torch.no_grad():
        pe = torch.nn.functional.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
        pe = pe.flatten(2).transpose(1, 2)  # (B, tokens, D)
        head = torch.nn.functional.linear(torch.from_numpy(out["features"]), sd["head.weight"], sd["head.bias"])
    assert rel_l2(out["patch_embed"], pe.numpy()) <= 1e-5
    assert rel_l2(out["logits"], head.numpy()) <= 1e-5
