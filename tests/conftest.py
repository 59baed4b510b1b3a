"""Test-wide setup, done before jax is imported anywhere.

- 8 simulated CPU devices (the sharding tests need a mesh).
- A persistent XLA compilation cache (jax's `jax_compilation_cache_dir`). Most of the suite's
  time is XLA compiling the same tiny programs again: every test builds its own jitted train
  step for the same tiny configs, each xdist worker and each child process (kill/resume,
  multi-process, CLI tests) compiles them afresh, and eager `init_params` compiles one program
  per random draw. With the cache the second compile of an identical program is a file read
  (about 8x less CPU on a tiny init + train step). The key is the optimised HLO, the compile
  options, the XLA flags and the jax/jaxlib versions, so an entry is never stale: changed code
  is a new key. Set through environment variables so that child processes inherit it.
  `LLM_TEST_COMPILATION_CACHE=<dir>` moves it, `=off` disables it; default: a folder per uid
  in the system temp dir, kept between runs. jax's own size bound (`..._cache_max_size`) scans
  the whole folder under a file lock at every write, so instead the session's first process
  trims the folder once, oldest entries first, to half of `MAX_CACHE_BYTES` when it is over.
"""

import os
import tempfile
from pathlib import Path

MAX_CACHE_BYTES = 4 * 1024**3


def _trim(cache: Path, max_bytes: int) -> None:
    """Deletes the oldest cache entries until the folder holds at most max_bytes // 2."""
    entries = sorted((p.stat().st_mtime, p.stat().st_size, p) for p in cache.glob("*-cache"))
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return
    for _, size, path in entries:
        if total <= max_bytes // 2:
            break
        path.unlink(missing_ok=True)
        total -= size


os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()

_user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
_default_cache = Path(tempfile.gettempdir()) / f"llm-tests-xla-cache-{_user}"
_cache = os.environ.setdefault("LLM_TEST_COMPILATION_CACHE", str(_default_cache))
if _cache != "off":
    if "PYTEST_XDIST_WORKER" not in os.environ and Path(_cache).is_dir():
        _trim(Path(_cache), MAX_CACHE_BYTES)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny programs too

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
