import numpy as np
import pytest
import torch

from mergeflow.merge.lapack import syevd_lower, syevx_lower, syrk_lower


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_syevx_lower_reads_the_lower_triangle_and_leaves_its_input(dtype):
    rng = np.random.default_rng(0)
    sym = rng.standard_normal((30, 30)).astype(dtype)
    sym = sym + sym.T
    given = np.tril(sym) + np.triu(rng.standard_normal((30, 30)).astype(dtype), 1)  # garbage above the diagonal
    before = given.copy()
    values, vectors = syevx_lower(given, 26, 29)
    expected_values, expected_vectors = np.linalg.eigh(sym.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(values, expected_values[26:], atol=tol)
    np.testing.assert_allclose(np.abs((vectors * expected_vectors[:, 26:]).sum(0)), 1.0, atol=tol)
    assert vectors.shape == (30, 4) and values.dtype == dtype
    np.testing.assert_array_equal(given, before)
    bottom, _ = syevx_lower(given, 0, 1)
    np.testing.assert_allclose(bottom, expected_values[:2], atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_syevd_lower_reads_the_lower_triangle_and_gives_scipys_bits(dtype):
    """The GIL-free call does what ``scipy.linalg.eigh(driver="evd")`` does, bit for bit: LOT's merged
    weights do not move with the wrapper."""
    import scipy.linalg

    rng = np.random.default_rng(2)
    sym = rng.standard_normal((40, 40)).astype(dtype)
    sym = sym + sym.T
    given = np.tril(sym) + np.triu(rng.standard_normal((40, 40)).astype(dtype), 1)
    before = given.copy()
    values, vectors = syevd_lower(given)
    expected_values, expected_vectors = scipy.linalg.eigh(given, driver="evd", check_finite=False)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(vectors, expected_vectors)
    np.testing.assert_array_equal(given, before)
    np.testing.assert_allclose(sym @ vectors, vectors * values, atol=1e-3 if dtype == np.float32 else 1e-10)
    assert syevd_lower(np.zeros((0, 0), dtype=dtype))[1].shape == (0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_syrk_lower_adds_to_the_lower_triangle_for_every_layout(dtype):
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((9, 20)).astype(dtype)
    layouts = {
        "row-major": wide[:, :5].copy(),
        "column-major": np.asfortranarray(wide[:, :5]),
        "column-major, longer leading dimension": np.asfortranarray(rng.standard_normal((12, 5)).astype(dtype))[:9],
        "row-major, longer leading dimension": wide[:, :5],
        "strided (copied)": wide[:, ::4],
    }
    for name, a in layouts.items():
        c = rng.standard_normal((9, 9)).astype(dtype)
        before = c.copy()
        assert syrk_lower(c, a, -0.5) is c, name
        np.testing.assert_allclose(np.tril(c), np.tril(before - 0.5 * a @ a.T), rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(np.triu(c, 1), np.triu(before, 1), err_msg=name)


def test_lapack_wrappers_reject_what_blas_cannot_take():
    with pytest.raises(TypeError, match="float32 or float64 expected, got int64"):
        syevx_lower(np.eye(3, dtype=np.int64), 0, 0)
    with pytest.raises(ValueError, match="c must be a square row-major array"):
        syrk_lower(np.zeros((3, 4), dtype=np.float32), np.zeros((3, 2), dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match="c must be a square row-major array"):
        syrk_lower(np.zeros((4, 4), dtype=np.float32)[:3, :3], np.zeros((3, 2), dtype=np.float32), 1.0)


def test_syevx_lower_agrees_with_torch_on_a_cat_sized_problem():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(200, 120, generator=g)
    m = a @ a.t() - 5.0 * torch.eye(200)
    values, vectors = syevx_lower(m.numpy(), 196, 199)
    expected = torch.linalg.eigvalsh(m.double())[196:]
    torch.testing.assert_close(torch.from_numpy(values).double(), expected, rtol=1e-5, atol=1e-4)
    v = torch.from_numpy(np.ascontiguousarray(vectors))
    torch.testing.assert_close(v.t() @ m @ v, torch.diag(torch.from_numpy(values)), rtol=1e-4, atol=1e-3)


def test_extreme_eigh_with_no_pair_asked_for_returns_empty_tensors():
    from mergeflow.merge.common import extreme_eigh

    values, vectors = extreme_eigh(torch.eye(4), 0, "top")
    assert values.shape == (0,) and vectors.shape == (4, 0)
