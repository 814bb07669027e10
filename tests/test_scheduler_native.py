"""The scheduler without a model file (tests/native/scheduler_test.cc): admission, chunked
prefill, batching, preemption and recomputation, cancellation, prefix hits, scoring and draft
tokens (written, then written over where refused), over a
scripted stand-in for the network whose answers are right only if every KV block the scheduler
hands it holds exactly its sequence's history. Built here with the C++ compiler the extension
is built with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["tests/native/scheduler_test.cc"] + [f"csrc/{s}.cc" for s in (
    "runtime/scheduler", "runtime/prompt_lookup", "runtime/model_runner", "runtime/generation", "runtime/request",
    "runtime/sampler", "runtime/tokenizer", "runtime/bpe", "runtime/vocab", "kv/kv_cache",
    "kv/disk_cache", "kv/kv_arena", "kv/prefix_cache", "core/thread_pool", "core/gguf", "core/os_memory")]
CHECKS = 26  # lines the driver prints, one per check


def compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    pytest.fail("no C++ compiler (the extension itself needs one)")


def test_the_scheduler_without_a_model(tmp_path):
    exe = tmp_path / "scheduler_test"
    build = subprocess.run([compiler(), "-std=c++17", "-O1", "-I", str(ROOT / "csrc"), "-o", str(exe),
                            *[str(ROOT / s) for s in SOURCES], "-pthread"],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[-1] == "0 failed", run.stdout + run.stderr
    assert sum(line.startswith("ok ") for line in lines) == CHECKS, run.stdout
