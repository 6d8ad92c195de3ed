"""LAPACK/BLAS calls that release the GIL: all eigenpairs (``syevd``), a subset of them (``syevx``) and one
triangle of ``A Aᵀ`` (``syrk``).

SciPy's Python wrappers (``scipy.linalg.eigh``, ``scipy.linalg.blas.ssyrk``) hold the GIL while the Fortran
code runs: two threads that call them take turns, and a thread doing torch work stalls as soon as it needs
the interpreter. CAT, CART, Iso-C, Iso-CTS, TSV and LOT run their units on several threads, so this module
calls the same routines through ctypes, which releases the GIL for the length of a foreign call. The function
pointers are the ones SciPy exports to Cython modules (``scipy.linalg.cython_lapack`` / ``cython_blas``): the
same library SciPy itself uses, with 32-bit ``int`` arguments by SciPy's contract.

``syevx_lower`` and ``syrk_lower`` take and return row-major NumPy arrays; LAPACK sees their transposes, so
"lower triangle" here is ``'U'`` there. ``syevd_lower`` hands LAPACK a column-major copy, as SciPy does.
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from scipy.linalg import cython_blas, cython_lapack  # loads SciPy's BLAS now, so that thread limits reach it

_PTR = ctypes.c_void_p


@cache
def _routine(kind: str, name: str, nargs: int):
    module = cython_lapack if kind == "lapack" else cython_blas
    capsule = module.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *([_PTR] * nargs))(address)  # CFUNCTYPE: the GIL is released during the call


def _prefix(dtype: np.dtype) -> tuple[str, type]:
    if dtype == np.float32:
        return "s", ctypes.c_float
    if dtype == np.float64:
        return "d", ctypes.c_double
    raise TypeError(f"LAPACK wrapper: float32 or float64 expected, got {dtype}")


def _call(routine, *objects) -> None:
    """Call ``routine`` with the addresses of ctypes scalars, bytes (Fortran characters) and NumPy arrays;
    ``objects`` keeps them all alive until it returns."""
    addresses = []
    for obj in objects:
        if isinstance(obj, np.ndarray):
            addresses.append(obj.ctypes.data)
        elif isinstance(obj, bytes):
            addresses.append(ctypes.cast(ctypes.c_char_p(obj), ctypes.c_void_p).value)
        else:
            addresses.append(ctypes.addressof(obj))
    routine(*addresses)


def syevx_lower(a: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs ``lo..hi`` (0-based, ascending) of the symmetric matrix whose lower triangle is ``a``'s.

    Returns ``(values, vectors)`` with ``vectors[:, j]`` the eigenvector of ``values[j]``. ``a`` is not
    modified.
    """
    prefix, real = _prefix(a.dtype)
    n = a.shape[0]
    work_a = np.array(a, dtype=a.dtype, order="C", copy=True)  # syevx destroys its input
    count = hi - lo + 1
    values = np.empty(n, dtype=a.dtype)
    vectors = np.empty((count, n), dtype=a.dtype)  # row-major (count × n) = column-major (n × count)
    iwork, ifail = np.empty(5 * n, dtype=np.intc), np.empty(n, dtype=np.intc)
    found, info = ctypes.c_int(0), ctypes.c_int(0)
    syevx = _routine("lapack", prefix + "syevx", 20)

    def call(work: np.ndarray, lwork: int) -> None:
        _call(syevx, b"V", b"I", b"U", ctypes.c_int(n), work_a, ctypes.c_int(n), real(0), real(0),
              ctypes.c_int(lo + 1), ctypes.c_int(hi + 1), real(0), found, values, vectors, ctypes.c_int(n), work,
              ctypes.c_int(lwork), iwork, ifail, info)

    query = np.empty(1, dtype=a.dtype)
    call(query, -1)  # workspace query: the optimal size lands in query[0]
    lwork = max(int(query[0]), 8 * n)
    call(np.empty(lwork, dtype=a.dtype), lwork)
    if info.value != 0:
        raise np.linalg.LinAlgError(f"LAPACK {prefix}syevx failed (info = {info.value})")
    return values[:found.value], vectors[:found.value].T


def syevd_lower(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs (ascending) of the symmetric matrix whose lower triangle is ``a``'s, by divide and
    conquer (``syevd``, what ``scipy.linalg.eigh(driver="evd")`` calls). ``a`` is not modified."""
    prefix, _ = _prefix(a.dtype)
    n = a.shape[0]
    if n == 0:
        return np.empty(0, dtype=a.dtype), np.empty((0, 0), dtype=a.dtype)
    # column-major, so that LAPACK reads the lower triangle itself ('L') as SciPy's eigh has it do: the same
    # operations, the same bits
    vectors = np.array(a, dtype=a.dtype, order="F", copy=True)  # overwritten by the eigenvectors
    values = np.empty(n, dtype=a.dtype)
    info = ctypes.c_int(0)
    syevd = _routine("lapack", prefix + "syevd", 11)

    def call(work: np.ndarray, lwork: int, iwork: np.ndarray, liwork: int) -> None:
        _call(syevd, b"V", b"L", ctypes.c_int(n), vectors, ctypes.c_int(n), values, work, ctypes.c_int(lwork),
              iwork, ctypes.c_int(liwork), info)

    query, iquery = np.empty(1, dtype=a.dtype), np.empty(1, dtype=np.intc)
    call(query, -1, iquery, -1)
    lwork, liwork = max(int(query[0]), 1 + 6 * n + 2 * n * n), max(int(iquery[0]), 3 + 5 * n)
    call(np.empty(lwork, dtype=a.dtype), lwork, np.empty(liwork, dtype=np.intc), liwork)
    if info.value != 0:
        raise np.linalg.LinAlgError(f"LAPACK {prefix}syevd failed (info = {info.value})")
    return values, vectors  # column j is eigenvector j


def syrk_lower(c: np.ndarray, a: np.ndarray, alpha: float) -> np.ndarray:
    """``c += alpha · a aᵀ`` in ``c``'s lower triangle, in place; ``c`` is row-major and square, ``a`` is
    ``(n, k)`` with unit stride along either axis (no copy) or anything else (copied)."""
    prefix, real = _prefix(c.dtype)
    if not c.flags.c_contiguous or c.shape[0] != c.shape[1]:
        raise ValueError("syrk_lower: c must be a square row-major array")
    n, k = a.shape
    if a.dtype != c.dtype:
        a = a.astype(c.dtype)
    item = a.itemsize
    if n and k and a.strides[0] == item and a.strides[1] >= n * item:  # column-major (n × k), any leading dim
        trans, lda = b"N", a.strides[1] // item
    elif n and k and a.strides[1] == item and a.strides[0] >= k * item:  # row-major = column-major aᵀ (k × n)
        trans, lda = b"T", a.strides[0] // item
    else:
        a = np.ascontiguousarray(a)
        trans, lda = b"T", max(k, 1)
    if n == 0 or k == 0:
        return c
    syrk = _routine("blas", prefix + "syrk", 10)
    _call(syrk, b"U", trans, ctypes.c_int(n), ctypes.c_int(k), real(alpha), a, ctypes.c_int(lda), real(1.0), c,
          ctypes.c_int(n))
    return c
