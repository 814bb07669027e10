"""Every SIMD kernel level agrees with the scalar reference and with exact arithmetic."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import quantize

from pyengine import _core

from conftest import ISA_LEVELS as LEVELS
# Ragged on purpose: rows not a multiple of 16 (the Q8_0 row group) or 4, token counts that
# leave partial tiles, float rows that are not a multiple of the vector width.
SHAPES = [(1, 32, 1), (17, 64, 3), (33, 96, 8), (48, 256, 13), (100, 160, 1), (7, 32, 9)]
FLOAT_COLS = [5, 40, 100, 263]


@pytest.fixture(autouse=True)
def restore_isa():
    before = _core.isa()
    yield
    _core.set_isa(before)


def weights(dtype: str, rows: int, cols: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(GGUF bytes, the exact float64 values those bytes encode)."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    if dtype == "Q8_0":
        raw = quantize(w, gguf.GGMLQuantizationType.Q8_0)
        exact = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    elif dtype == "F16":
        raw = w.astype(np.float16)
        exact = raw
    elif dtype == "BF16":
        raw = quantize(w, gguf.GGMLQuantizationType.BF16)
        exact = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.BF16)
    else:
        raw = w
        exact = w
    return np.ascontiguousarray(raw).view(np.uint8).ravel(), np.asarray(exact, np.float64)


def rounded_activations(dtype: str, x: np.ndarray) -> np.ndarray:
    """The activations as the kernels see them (the reference's rounding for each type)."""
    if dtype == "Q8_0":
        raw = quantize(x, gguf.GGMLQuantizationType.Q8_0)
        return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0), np.float64)
    if dtype == "F16":
        return x.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        raw = quantize(x, gguf.GGMLQuantizationType.BF16)
        return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.BF16), np.float64)
    return x.astype(np.float64)


def cases():
    for dtype in ("Q8_0", "F16", "BF16", "F32"):
        shapes = SHAPES if dtype == "Q8_0" else [(r, c, n) for (r, _, n), c in zip(SHAPES, FLOAT_COLS * 2)]
        for shape in shapes:
            yield dtype, shape


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype,shape", list(cases()))
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_matches_exact_and_scalar(level, dtype, shape, threads):
    rows, cols, n = shape
    raw, exact_w = weights(dtype, rows, cols, seed=rows * 1000 + cols)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    _core.set_isa(level)
    got = _core.matmul(dtype, raw, rows, cols, x, threads).astype(np.float64)
    _core.set_isa("scalar")
    ref = _core.matmul(dtype, raw, rows, cols, x, 1).astype(np.float64)
    exact = rounded_activations(dtype, x) @ exact_w.T
    scale = np.abs(rounded_activations(dtype, x)) @ np.abs(exact_w).T  # bound of the rounding
    assert got.shape == (n, rows)
    # Integer dot products are exact; only float32 summation order may differ.
    assert np.all(np.abs(got - exact) <= 1e-5 * scale + 1e-6), np.max(np.abs(got - exact))
    assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-6)


def test_activation_quantization_rounds_half_to_even():
    # 127/amax * x lands exactly on .5 here: ggml's SIMD path rounds half to even.
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 127.0
    x[0, 1] = 2.5
    x[0, 2] = 3.5
    w = np.zeros((1, 32), np.float32)
    w[0, 1] = 1.0
    w[0, 2] = 1.0
    raw = quantize(w, gguf.GGMLQuantizationType.Q8_0).view(np.uint8).ravel()
    y = _core.matmul("Q8_0", raw, 1, 32, x, 1)
    assert y[0, 0] == pytest.approx(2.0 + 4.0, rel=1e-3)  # half away from zero would give 7


def test_isa_can_be_forced_and_reported():
    assert _core.isa() in ("scalar", "avx2", "avx512", "neon", "dotprod")
    _core.set_isa("scalar")
    assert _core.isa() == "scalar"
    with pytest.raises(ValueError):
        _core.set_isa("sse9")


def test_environment_variable_caps_the_level():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "from pyengine import _core; print(_core.isa())"],
                          env={**__import__("os").environ, "PYENGINE_ISA": "scalar"},
                          capture_output=True, text=True, cwd="/")
    assert proc.stdout.strip() == "scalar", proc.stderr


@pytest.mark.skipif(_core.best_isa() != "avx512", reason="the integer F16 path needs AVX-512 VNNI")
@pytest.mark.parametrize("rows,cols,n", [(16, 16, 16), (40, 96, 17), (33, 256, 64)])
def test_f16_prompt_path_within_its_quantization_bound(rows, cols, n):
    """Prompt-sized F16 products run through 14-bit x 15-bit integer blocks of 16 values."""
    _core.set_isa("avx512")
    raw, w = weights("F16", rows, cols, seed=rows + cols)
    x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
    xr = rounded_activations("F16", x)
    got = _core.matmul("F16", raw, rows, cols, x, 2).astype(np.float64)
    exact = xr @ w.T
    # Each value may move by half a step of its block's integer grid.
    w_step = np.repeat(np.abs(w).reshape(rows, -1, 16).max(axis=2), 16, axis=1) / 8191 / 2
    x_step = np.repeat(np.abs(xr).reshape(n, -1, 16).max(axis=2), 16, axis=1) / 16383 / 2
    bound = np.abs(xr) @ w_step.T + x_step @ np.abs(w).T + x_step @ w_step.T
    scale = np.abs(xr) @ np.abs(w).T
    assert np.all(np.abs(got - exact) <= bound + 1e-5 * scale + 1e-6)
    # And it is a real approximation, not the float path: some error is there.
    assert np.abs(got - exact).max() > 0


@pytest.mark.parametrize("cap", [30.0, 15.0])
def test_logit_softcap_is_tanh_to_a_few_ulp(cap):
    """Gemma 3n's and Gemma 4's final soft-cap, cap * tanh(x / cap), vectorized: within 3.5 ulp
    of exact arithmetic on the rounded quotient (tanh within 1.5 ulp, scaled by cap, rounded
    once more) over the whole range logits take and beyond, with infinities and NaN kept."""
    f = np.float32
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-20 * cap, 20 * cap, 400_001, dtype=f),
                        (rng.standard_normal(100_000) * cap).astype(f),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30], dtype=f)])
    got = _core.softcap(x, cap).astype(np.float64)
    exact = cap * np.tanh((x / f(cap)).astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(f)).astype(np.float64)
    err = np.abs(got - exact) / np.maximum(ulp, np.finfo(f).smallest_subnormal)
    assert err.max() <= 3.5, (err.max(), x[err.argmax()])
    assert np.array_equal(np.sign(got), np.sign(x))  # odd, and 0 stays 0
    special = _core.softcap(np.array([np.inf, -np.inf, np.nan], dtype=f), cap)
    assert special[0] == cap and special[1] == -cap and np.isnan(special[2])
