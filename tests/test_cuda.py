"""The CUDA backend against the CPU backend on the synthetic models.

Everything but the first two tests needs a CUDA device and a build with the backend
(``CMAKE_ARGS="-DPYENGINE_CUDA=ON"``, or AUTO where a toolkit is found); elsewhere they skip.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import prompt_ids
from support import rel_err
from pyengine import Engine, PyEngineError, _core

needs_gpu = pytest.mark.skipif(not _core.cuda_available(),
                               reason=f"no CUDA backend here: {_core.cuda_device_info()}")

# Logits of the CUDA backend against the CPU's, per (model, weight type): worst position's
# relative error and top-1 agreement. Bounds are at most twice what the CPU emulator of CUDA
# measures (same kernels, same operation order): f32 6.9e-4 / 1.000, f16 2.0e-3 / 1.000,
# bf16 7.0e-3 / 0.997, q8_0 2.5e-2 / 0.985; Gemma 3n f32 4.7e-4 / 0.999, f16 1.6e-3 / 0.998,
# q8_0 3.3e-2 / 0.978 (the Q8_0 products take int8 activations of their own rounding).
BOUNDS = [("tiny", "f32", 1.5e-3, 0.99), ("tiny", "f16", 4e-3, 0.99), ("tiny", "bf16", 1e-2, 0.99),
          ("tiny", "q8_0", 5e-2, 0.97), ("tiny-3n", "f32", 1e-3, 0.99),
          ("tiny-3n", "f16", 3.5e-3, 0.99), ("tiny-3n", "q8_0", 6.5e-2, 0.95)]



def test_without_a_device_cuda_is_a_clean_error(tiny_f32):
    info = _core.cuda_device_info()
    assert isinstance(info, str) and info
    if _core.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(PyEngineError, match="cuda"):
        Engine(tiny_f32, backend="cuda")
    assert Engine(tiny_f32, backend="auto").backend in ("native", "mlx")


def test_selftest_needs_the_backend():
    if _core.cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(PyEngineError, match="CUDA"):
        _core.cuda_selftest()


def test_device_option_is_checked(tiny_f32):
    with pytest.raises(PyEngineError, match="device must be"):
        _core.Engine(str(tiny_f32), device="tpu")


@pytest.mark.skipif(not hasattr(_core, "cuda_emulator_faults"),
                    reason="not a build on the CPU emulator of CUDA")
def test_the_emulator_reports_each_fault():
    """The emulator that runs this file without a GPU fails where a device would (or would be
    undefined), naming the kernel: otherwise the tests below could pass on it vacuously."""
    expect = {"shuffle_after_return": "where 16 lanes have returned",
              "partial_barrier": "__syncthreads reached by 32 of 64 threads",
              "host_pointer": "WriteKernel: argument 0 is not device memory",
              "misaligned_wmma": "wmma::load_matrix_sync: a pointer off a 32-byte boundary",
              "empty_grid": "invalid configuration argument",
              "copy_out_of_bounds": "not (wholly) inside a device allocation",
              "malloc_in_capture": "cudaMalloc while a stream is being captured",
              "invalidated_capture": "the capture was invalidated",
              "healthy_after_reset": "ok"}
    faults = _core.cuda_emulator_faults()
    assert set(faults) == set(expect)
    for name, text in expect.items():
        assert text in faults[name], f"{name}: {faults[name]}"


# Largest relative error of each kernel against its CPU counterpart (cuda_selftest). Matrix
# products and norms differ only in summation order; attention and the stored keys/values may
# differ by an fp16 rounding where exp, rsqrt or sin/cos land on either side of a tie.
SELFTEST_BOUNDS = {"argmax": 0.0, "matmul": 1e-5, "rms_norm": 1e-5, "gelu_mul": 1e-6, "attention": 2e-3,
                   "kv_write": 2e-3}


@needs_gpu
def test_each_kernel_matches_its_cpu_counterpart():
    results = _core.cuda_selftest()
    checked = set()
    for name, err in results.items():
        prefix = next((p for p in SELFTEST_BOUNDS if name.startswith(p)), None)
        assert prefix is not None, f"{name}: a self-test check without a bound"
        assert err <= SELFTEST_BOUNDS[prefix], f"{name}: {err:.2e}"
        checked.add(prefix)
    assert checked == set(SELFTEST_BOUNDS)  # every kind of kernel was checked


@needs_gpu
@pytest.mark.parametrize("preset,dtype,max_err,min_top1", BOUNDS)
def test_logits_match_the_cpu(make_model, preset, dtype, max_err, min_top1):
    path = make_model(preset, dtype)
    with Engine(path, n_ctx=512, backend="cuda") as gpu, \
            Engine(path, n_ctx=512, backend="native") as cpu:
        errs, hits = [], []
        for seed in range(4):
            ids = prompt_ids(cpu.n_vocab, 250, seed)
            ours, ref = gpu.logits(ids).astype(np.float64), cpu.logits(ids).astype(np.float64)
            errs.append(rel_err(ours, ref))
            hits.append(ours.argmax(1) == ref.argmax(1))
    err, top1 = np.concatenate(errs), float(np.concatenate(hits).mean())
    assert err.max() <= max_err, f"{preset}/{dtype}: worst position {err.max():.2e}"
    assert top1 >= min_top1, f"{preset}/{dtype}: top-1 agreement {top1:.3f}"


@needs_gpu
@pytest.mark.parametrize("preset", ["tiny", "tiny-3n"])
def test_ollama_blobs_match_the_cpu(make_model, tmp_path, preset):
    """Ollama's blobs as published (scripts/ollama_style.py): Gemma 3 with its vision tower in
    the file, Gemma 3n with ids past its per-layer table in the prompt."""
    from ollama_style import TINY_VISION, rewrite

    text = 3072
    original = (make_model("tiny", "f32") if preset == "tiny" else
                make_model("tiny-3n", "f32", n_vocab=text + 64, n_vocab_per_layer=text))
    blob = tmp_path / "blob.gguf"
    rewrite(original, blob, ["all"], vision=TINY_VISION)
    with Engine(blob, n_ctx=512, backend="cuda") as gpu, \
            Engine(blob, n_ctx=512, backend="native") as cpu:
        ids = prompt_ids(text, 120, seed=2)
        ids[7:11] = list(range(cpu.n_vocab - 4, cpu.n_vocab))  # 3n: past the per-layer table
        ours, ref = gpu.logits(ids).astype(np.float64), cpu.logits(ids).astype(np.float64)
    err = rel_err(ours, ref)
    assert err.max() <= 5e-3 and (ours.argmax(1) == ref.argmax(1)).mean() >= 0.99


@needs_gpu
@pytest.mark.parametrize("preset", ["tiny", "tiny-3n"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_greedy_generation_is_identical(make_model, preset, dtype):
    path = make_model(preset, dtype)
    with Engine(path, n_ctx=512, backend="cuda") as gpu, \
            Engine(path, n_ctx=512, backend="native") as cpu:
        for prompt in (gpu.tokenize("The quick brown fox jumps over the lazy dog."),
                       prompt_ids(cpu.n_vocab, 120, seed=3)):
            a = gpu.generate(prompt, max_tokens=32, temperature=0, ignore_eos=True)
            b = cpu.generate(prompt, max_tokens=32, temperature=0, ignore_eos=True)
            assert a.tokens == b.tokens


@needs_gpu
def test_constrained_rows_on_the_device(make_model):
    """A format's mask applies to the device's rows too (they bring back logits, not the
    device's argmax): greedy answers validate and are the CPU's, token for token, beside a
    free row that keeps its greedy tokens."""
    import json

    import jsonschema

    schema = {"type": "object", "required": ["n", "tag"], "additionalProperties": False,
              "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                             "tag": {"enum": ["a", "b", "c"]}}}
    path = make_model("tiny", "q8_0")
    with Engine(path, n_ctx=512, backend="cuda") as gpu, \
            Engine(path, n_ctx=512, backend="native") as cpu:
        for seed in range(2):
            a = gpu.generate(f"JSON {seed}:", max_tokens=48, temperature=0, format=schema)
            b = cpu.generate(f"JSON {seed}:", max_tokens=48, temperature=0, format=schema)
            jsonschema.validate(json.loads(a.text), schema)
            assert a.tokens == b.tokens
        free = gpu.stream("free", max_tokens=16, temperature=0, ignore_eos=True)
        constrained = gpu.generate("JSON:", max_tokens=48, temperature=0, format=schema)
        jsonschema.validate(json.loads(constrained.text), schema)
        assert [c.token for c in free if c.token >= 0] == \
            cpu.generate("free", max_tokens=16, temperature=0, ignore_eos=True).tokens


@needs_gpu
def test_batched_requests_and_prefix_reuse_on_the_device(make_model):
    from support import assert_all_pages_back, prompts, run_concurrently

    path = make_model("tiny", "q8_0")
    ps = prompts(1, [3, 17, 40, 90, 150, 260])
    with Engine(path, n_ctx=512, backend="cuda") as gpu:
        ref = [gpu.generate(p, max_tokens=16, temperature=0, ignore_eos=True).tokens for p in ps]
    with Engine(path, n_ctx=512, backend="cuda", max_batch=4, max_batch_tokens=48,
                batch_wait_ms=10_000) as gpu:  # the first step waits for max_batch requests
        got = run_concurrently(gpu, ps, 16)
        st = assert_all_pages_back(gpu)
        assert got == ref and st["max_step_sequences"] > 1
        shared = prompts(6, [200])[0]
        gpu.generate(shared + [11, 12], max_tokens=4, temperature=0, ignore_eos=True)
        again = gpu.generate(shared + [21, 22], max_tokens=8, temperature=0, ignore_eos=True)
        assert again.cached_tokens == len(shared) // 16 * 16
    with Engine(path, n_ctx=512, backend="cuda", prefix_cache=False) as cold:
        assert cold.generate(shared + [21, 22], max_tokens=8, temperature=0,
                             ignore_eos=True).tokens == again.tokens


@needs_gpu
def test_graphs_and_direct_launches_agree(make_model, monkeypatch):
    """Steps replayed from captured CUDA graphs compute what directly launched kernels do."""
    path = make_model("tiny-3n", "q8_0")
    prompt = prompt_ids(3072, 40, seed=9)
    with Engine(path, n_ctx=512, backend="cuda") as gpu:
        graphed = gpu.generate(prompt, max_tokens=24, temperature=0, ignore_eos=True).tokens
    monkeypatch.setenv("PYENGINE_CUDA_GRAPHS", "0")
    with Engine(path, n_ctx=512, backend="cuda") as gpu:
        direct = gpu.generate(prompt, max_tokens=24, temperature=0, ignore_eos=True).tokens
    assert graphed == direct
