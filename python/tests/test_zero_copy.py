# Inputs are read in place: the buffer the library is handed is the caller's array; other layouts are copied once.
import numpy as np

import mambacv


def handed():
    """(address, copied) of the image batch the last call on this thread handed to the library."""
    return mambacv._mambacv._last_input()


def test_contiguous_array_is_not_copied(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    x = np.array(g["input"], copy=True)  # our own C-contiguous float32 buffer
    m.classify(x)
    assert handed() == (x.ctypes.data, False)
    m.features(x)
    assert handed() == (x.ctypes.data, False)
    # a view at an offset of a larger buffer is read in place too
    big = np.concatenate([x, x])
    view = big[2:]
    assert view.flags.c_contiguous
    m.classify(view)
    assert handed() == (view.ctypes.data, False)
    # a view 4 bytes into a buffer (aligned for float32, not for SIMD) is read in place as well
    flat = np.empty(x.size + 1, dtype=np.float32)
    shifted = flat[1:].reshape(x.shape)
    shifted[...] = x
    np.testing.assert_array_equal(m.classify(shifted), m.classify(x))
    m.classify(shifted)
    assert handed() == (shifted.ctypes.data, False)


def test_the_library_reads_the_callers_buffer(vmamba_v2_mini):
    # Writing into the very buffer between calls changes the result, and restoring it restores the result: the
    # library reads that memory, not a snapshot taken when the array was first seen.
    m, g = vmamba_v2_mini
    x = np.array(g["input"], copy=True)
    a = m.classify(x)
    x[...] = 0.5
    b = m.classify(x)
    x[...] = g["input"]
    c = m.classify(x)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert handed() == (x.ctypes.data, False)


def test_non_contiguous_array_is_copied_once_and_gives_the_same_result(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    ref = m.classify(g["input"])
    nhwc = np.ascontiguousarray(g["input"].transpose(0, 2, 3, 1))
    x = nhwc.transpose(0, 3, 1, 2)  # NCHW view of NHWC memory: not C-contiguous
    assert not x.flags.c_contiguous
    out = m.classify(x)
    address, copied = handed()
    assert copied and address != x.ctypes.data
    np.testing.assert_array_equal(out, ref)
    # Fortran order and a strided slice
    np.testing.assert_array_equal(m.classify(np.asfortranarray(g["input"])), ref)
    assert handed()[1]
    wide = np.repeat(g["input"], 2, axis=3)
    np.testing.assert_array_equal(m.classify(np.ascontiguousarray(wide[..., ::2])), m.classify(wide[..., ::2]))


def test_unaligned_buffer_is_copied(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    raw = np.zeros(g["input"].nbytes + 1, dtype=np.uint8)
    x = raw[1:].view(np.float32).reshape(g["input"].shape)
    x[...] = g["input"]
    assert not x.flags.aligned
    np.testing.assert_array_equal(m.classify(x), m.classify(g["input"]))


def test_buffer_protocol_and_dlpack_are_read_in_place(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    x = np.array(g["input"], copy=True)
    ref = m.classify(x)
    mv = memoryview(x)
    np.testing.assert_array_equal(m.classify(mv), ref)
    assert handed() == (x.ctypes.data, False)
    view = mambacv.from_dlpack(x)  # NumPy >= 1.22 exports DLPack
    assert view.ctypes.data == x.ctypes.data and view.shape == x.shape
    np.testing.assert_array_equal(m.classify(view), ref)
    assert handed() == (x.ctypes.data, False)


def test_outputs_are_numpy_arrays_owning_the_result(vmamba_v2_mini):
    m, g = vmamba_v2_mini
    logits = m.classify(g["input"])
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32 and logits.shape == (2, 10)
    assert logits.flags.c_contiguous and logits.flags.writeable
    f = m.features(g["input"])
    del m  # results outlive the model and the call
    assert all(isinstance(v, np.ndarray) for v in f.values())
    assert np.isfinite(f["stage.3"]).all()
