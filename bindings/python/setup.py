"""Build hook: compiles libtollgate with cargo and ships it inside the package.

Set TOLLGATE_LIBRARY_BUILD to an existing libtollgate.so to copy that instead
of running cargo (e.g. a prebuilt artifact), or TOLLGATE_REPO_ROOT when the
Rust crate is not two levels above this file.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
LIB = "libtollgate.so"


def repo_root() -> Path:
    env = os.environ.get("TOLLGATE_REPO_ROOT")
    candidates = [Path(env)] if env else [HERE.parent.parent]
    for c in candidates:
        if (c / "Cargo.toml").is_file() and 'name = "tollgate"' in (c / "Cargo.toml").read_text():
            return c
    raise SystemExit(
        f"tollgate: cannot find the tollgate Rust crate (looked in {', '.join(map(str, candidates))}); "
        "set TOLLGATE_REPO_ROOT to the repository root or TOLLGATE_LIBRARY_BUILD to a built libtollgate.so"
    )


def built_library() -> Path:
    prebuilt = os.environ.get("TOLLGATE_LIBRARY_BUILD")
    if prebuilt:
        p = Path(prebuilt)
        if not p.is_file():
            raise SystemExit(f"tollgate: TOLLGATE_LIBRARY_BUILD={p} does not exist")
        return p
    root = repo_root()
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    # The quota store (feature redis) is part of the package: Limiter(redis=...).
    cmd = [cargo, "build", "--release", "--lib", "--features", "redis"]
    print(f"tollgate: running {' '.join(cmd)} in {root}", flush=True)
    subprocess.run(cmd, cwd=root, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")
    lib = target / "release" / LIB
    if not lib.is_file():
        raise SystemExit(f"tollgate: cargo finished but {lib} is missing")
    return lib


class BuildWithLibrary(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "tollgate" / LIB
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built_library(), dest)
        dest.chmod(0o755)


class PlatformDistribution(Distribution):
    # The wheel carries a native library: it must not be tagged pure Python.
    def has_ext_modules(self) -> bool:
        return True


cmdclass = {"build_py": BuildWithLibrary}
try:
    from wheel.bdist_wheel import bdist_wheel

    class PlatformWheel(bdist_wheel):
        # The library is loaded through ctypes, not the CPython ABI: any
        # Python 3 on this platform can use the same wheel.
        def get_tag(self):  # type: ignore[no-untyped-def]
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = PlatformWheel
except ImportError:
    pass

setup(cmdclass=cmdclass, distclass=PlatformDistribution)
