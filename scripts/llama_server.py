#!/usr/bin/env python3
"""llama.cpp's HTTP server as a benchmark peer: build it, run it, stream completions from it.

The server (and any other llama.cpp tool: ``ensure_tool("llama-perplexity")``) is built from the
llama-cpp-python source distribution pinned in pyproject.toml (the same llama.cpp the oracle
uses), with the CMake arguments of oracle_cmake_args.py, in one build tree cached in
bench_out/llama-server/ of the checkout (git-ignored) so later runs reuse the binaries:

    python scripts/llama_server.py            # build (or find) it; print its path and version
    python scripts/llama_server.py --target llama-perplexity

Only the standard library talks HTTP: one connection per request, SSE streaming, and each token
timestamped on arrival.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_DIR = SCRIPTS_DIR.parent
PACKAGE = "llama-cpp-python"
DEFAULT_CACHE = REPO_DIR / "bench_out" / "llama-server"
# Options we set when this llama.cpp has them; absent ones are skipped (CMake would warn).
WANTED_OPTIONS = {
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_TOOLS": "ON",  # the server lives under tools/ in recent versions
    "LLAMA_BUILD_COMMON": "ON",
    "LLAMA_CURL": "OFF",
    "LLAMA_OPENSSL": "OFF",  # plain HTTP on localhost; no TLS library needed
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_UI": "OFF",  # no npm at build time
    "LLAMA_USE_PREBUILT_UI": "OFF",  # no download at build time: the web UI is not benchmarked
}


# -------------------------------------------------------------------------------------- build

def pinned_version() -> str:
    """The llama-cpp-python version pinned in pyproject.toml (the oracle's)."""
    text = (REPO_DIR / "pyproject.toml").read_text()
    match = re.search(r"llama-cpp-python==([0-9][0-9A-Za-z.]*)", text)
    if not match:
        raise RuntimeError("pyproject.toml pins no llama-cpp-python version")
    return match.group(1)


def _existing_options(src: Path) -> set[str]:
    """Names of the options llama.cpp's top-level CMakeLists declares (deprecated ones too)."""
    text = (src / "CMakeLists.txt").read_text()
    return set(re.findall(r"\b(?:option|llama_option_depr)\s*\(\s*(?:\w+\s+)?(LLAMA_\w+)", text))


def cuda_arch() -> str:
    """The local GPU's architecture for CMAKE_CUDA_ARCHITECTURES ("90" for an H100/H200)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.split()[0].replace(".", "")


def cmake_args(src: Path, cuda: bool = False) -> list[str]:
    """Configure arguments: a static Release server, plus the CPU flags the oracle is built with;
    with cuda, llama.cpp's CUDA backend for the local GPU's architecture only."""
    sys.path.insert(0, str(SCRIPTS_DIR))
    import oracle_cmake_args

    have = _existing_options(src)
    args = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF"]
    args += [f"-D{k}={v}" for k, v in WANTED_OPTIONS.items() if k in have]
    if cuda:
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch()}"]
    return args + oracle_cmake_args.cmake_args()


def _run_logged(cmd: Sequence[str], log: Path, what: str, poll_s: float = 30.0) -> None:
    """Runs cmd with its output appended to log, printing a progress line every poll_s seconds."""
    t0 = time.monotonic()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            try:
                rc = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                tail = log.read_text(errors="replace").rstrip().rsplit("\n", 1)[-1]
                print(f"  {what}: {time.monotonic() - t0:5.0f} s  {tail[:90]}", file=sys.stderr,
                      flush=True)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{what} failed ({rc}); see {log}\n{tail}")


def _fetch_source(cache: Path, version: str) -> Path:
    """The unpacked llama.cpp tree of the pinned sdist, downloaded with pip when not cached."""
    src = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    sdist_dir = cache / "sdist"
    sdists = sorted(sdist_dir.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not sdists:
        print(f"downloading the {PACKAGE} {version} sdist ...", file=sys.stderr, flush=True)
        # pip prepares the sdist's metadata in an isolated environment of its own: the running
        # one need not have llama-cpp-python's build backend.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--no-binary", PACKAGE, f"{PACKAGE}=={version}",
                        "-d", str(sdist_dir)], check=True, stdout=sys.stderr)
        sdists = sorted(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise RuntimeError(f"pip download left no {PACKAGE} sdist in {sdist_dir}")
    with tarfile.open(sdists[0]) as tar:
        # "data" refuses links and paths that leave the target directory (Python >= 3.11.4).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(cache, **safe)
    if not (src / "CMakeLists.txt").exists():
        raise RuntimeError(f"the sdist has no vendor/llama.cpp (looked in {src})")
    return src


def ensure_tool(target: str, cache: Path = DEFAULT_CACHE, version: str | None = None,
                jobs: int | None = None, cuda: bool = False) -> Path:
    """Path of llama.cpp's ``target`` binary (``llama-server``, ``llama-perplexity``, ...) cached
    in cache, configured and built first when needed.

    Every target shares one build tree, so a second tool only compiles its own sources. A stamp
    next to each binary records the version and configure arguments; a change of either
    (another CPU, another pin) triggers a rebuild, so a stale binary is never measured.
    """
    version = version or pinned_version()
    binary, stamp = cache / target, cache / f"{target}.json"
    if binary.exists() and stamp.exists():
        recorded = json.loads(stamp.read_text())
        src = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        if recorded.get("version") == version and (
                not src.exists() or recorded.get("cmake_args") == cmake_args(src, cuda)):
            return binary
    cache.mkdir(parents=True, exist_ok=True)
    src = _fetch_source(cache, version)
    build, log = cache / "build", cache / "build.log"
    args = cmake_args(src, cuda)
    print(f"building {target} {version} (log: {log}) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run_logged(["cmake", "-S", str(src), "-B", str(build), *generator, *args], log, "configure")
    jobs = jobs or os.cpu_count() or 2
    _run_logged(["cmake", "--build", str(build), "--target", target, "-j", str(jobs)],
                log, "build")
    built = next((p for p in (build / "bin" / target, build / target) if p.exists()), None)
    if built is None:
        raise RuntimeError(f"the build produced no {target} binary under {build}")
    shutil.copy2(built, binary)
    stamp.write_text(json.dumps({"version": version, "cmake_args": args,
                                 "build_s": round(time.monotonic() - t0, 1)}, indent=1) + "\n")
    print(f"  built in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return binary


def ensure_server(cache: Path = DEFAULT_CACHE, version: str | None = None,
                  jobs: int | None = None, cuda: bool = False) -> Path:
    """Path of the llama-server binary (``ensure_tool("llama-server", ...)``)."""
    return ensure_tool("llama-server", cache, version, jobs, cuda)


def server_version(binary: Path) -> str:
    """llama-server --version on one line: version, build number, commit, compiler."""
    proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return "; ".join(lines) or "unknown"


# ------------------------------------------------------------------------------------- server

_HELP: dict[str, set[str]] = {}


def help_flags(binary: Path) -> set[str]:
    """Every option spelling llama-server --help lists (flags differ between versions)."""
    if str(binary) not in _HELP:
        proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
        _HELP[str(binary)] = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)",
                                            proc.stdout + proc.stderr))
    return _HELP[str(binary)]


def gpu_memory_mib(pid: int) -> float | None:
    """GPU memory a process holds, in MiB, as nvidia-smi reports it (None when unknown)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    """A llama-server process serving one model, started on entry and stopped on exit.

    parallel slots with continuous batching share n_ctx cells; threads is used for both decode
    and batch (prompt) threads so the peer runs on exactly the CPUs pyengine gets. The log goes
    to log_dir/name.log, kept for post-mortems.
    """

    binary: Path
    model: Path
    parallel: int
    n_ctx: int
    threads: int
    log_dir: Path
    name: str = "server"
    extra: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 0
    command: list[str] = field(default_factory=list, init=False)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    def _args(self) -> list[str]:
        have = help_flags(self.binary)
        args = ["-m", str(self.model), "--host", self.host, "--port", str(self.port),
                "-c", str(self.n_ctx), "-np", str(self.parallel), "-t", str(self.threads),
                "-tb", str(self.threads)]
        # Optional spellings: only passed when this build knows them.
        for flag in ("--cont-batching", "--no-webui", "--metrics"):
            if flag in have:
                args.append(flag)
        return args + list(self.extra)

    def __enter__(self) -> "LlamaServer":
        self.port = self.port or free_port()
        self.command = [str(self.binary), *self._args()]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{self.name}.log"
        with log.open("w") as fh:
            self._proc = subprocess.Popen(self.command, stdout=fh, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy(log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _wait_healthy(self, log: Path, timeout_s: float = 600.0) -> None:
        """Polls GET /health until the model is loaded (503 while loading)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise RuntimeError(f"llama-server exited while loading; {log}:\n{tail}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        return
                finally:
                    conn.close()
            time.sleep(0.2)
        raise TimeoutError(f"llama-server not healthy after {timeout_s:.0f} s; see {log}")

    def gpu_memory_mib(self) -> float | None:
        """The server's GPU memory in MiB (None without nvidia-smi or a GPU)."""
        return gpu_memory_mib(self._proc.pid) if self._proc else None

    def get_json(self, path: str) -> Any:
        """GET path and decode its JSON body."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def decode_counters(self) -> dict[str, float]:
        """llama_decode calls so far and busy slots summed over them (empty without --metrics).

        The server exports the mean busy slots per call; times the call count gives the sum, so
        the difference of two readings is one interval's.
        """
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()
        if resp.status != 200:
            return {}
        values = dict(re.findall(r"^llamacpp:(\w+)\s+(\S+)$", text, re.MULTILINE))
        try:
            calls = float(values["n_decode_total"])
            return {"steps": calls,
                    "step_sequences": calls * float(values["n_busy_slots_per_decode"])}
        except (KeyError, ValueError):
            return {}

    def stream(self, ids: list[int], n_predict: int) -> Iterator[tuple[int, list[int],
                                                                    dict[str, Any] | None]]:
        """POST /completion with stream=true; yields (tokens arrived, their ids, final facts).

        Greedy (temperature 0, top_k 1, no penalties), ignore_eos, cache_prompt. The count comes
        from tokens_predicted, not from the ids: the server holds back a token that ends inside a
        UTF-8 character and streams the next one with its count, so one event may bring several
        tokens (and only the last one's id).
        """
        body = {"prompt": ids, "n_predict": n_predict, "temperature": 0.0, "top_k": 1,
                "repeat_penalty": 1.0, "ignore_eos": True, "stream": True,
                "cache_prompt": True}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            conn.request("POST", "/completion", body=json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"/completion: HTTP {resp.status}: {resp.read()[:500]!r}")
            seen = 0
            for raw in resp:  # SSE: "data: {json}" lines separated by blank lines
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    if line.startswith("error:"):
                        raise RuntimeError(f"/completion stream: {line}")
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(f"/completion stream: {event['error']}")
                count = int(event.get("tokens_predicted", seen + len(event.get("tokens", []))))
                final = None
                if event.get("stop"):
                    final = {k: event.get(k) for k in ("timings", "tokens_cached",
                                                       "tokens_evaluated", "stop_type")}
                yield count - seen, ([] if final else list(event.get("tokens", []))), final
                seen = count
                if final:
                    return
        finally:
            conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="Build (or find) a cached llama.cpp tool binary.")
    ap.add_argument("--target", default="llama-server",
                    help="llama.cpp CMake target (default llama-server; e.g. llama-perplexity)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="build cache folder")
    ap.add_argument("--jobs", type=int, help="parallel compile jobs (default: one per CPU)")
    args = ap.parse_args()
    binary = ensure_tool(args.target, args.cache, jobs=args.jobs)
    print(binary)
    print(server_version(binary))


if __name__ == "__main__":
    main()
