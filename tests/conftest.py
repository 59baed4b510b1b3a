"""Test-wide setup, done before jax is imported anywhere.

- 8 simulated CPU devices (the sharding tests need a mesh).
- An opt-in persistent XLA compilation cache (jax's `jax_compilation_cache_dir`):
  `LLM_TEST_COMPILATION_CACHE=<dir>`. Most of the suite's time is XLA compiling the same tiny
  programs again (every test builds its own jitted step for the same tiny configs, each xdist
  worker and child process compiles them afresh); with a warm cache a second compile is a
  file read (about 8x less CPU on a tiny init + train step). It is OFF by default: on a cold
  cache the whole suite went from ~40 to 37 min only, and one run (2026-12-07) lost an xdist
  worker to a segmentation fault inside jax's cache write (`put_executable_and_time`; the
  test alone passes with the cache, cause not established). The key is the lowered module,
  compile options, XLA flags, backend and jax/jaxlib versions, so entries are never stale.
  Set through environment variables so that child processes inherit it. The session's first
  process trims the folder once, oldest-written entries first, to half of `MAX_CACHE_BYTES`
  when it is over (jax's own bound rescans the folder under a lock at every write); an entry
  another session deletes meanwhile is skipped. The folder must belong to this user and not
  be world-writable (it holds executables): otherwise the cache is refused, naming it.
"""

import os
from pathlib import Path

MAX_CACHE_BYTES = 4 * 1024**3


def _trim(cache: Path, max_bytes: int) -> None:
    """Deletes the oldest cache entries until the folder holds at most max_bytes // 2."""
    entries = []
    for path in cache.glob("*-cache"):
        try:
            stat = path.stat()
        except OSError:  # removed by a concurrent session's trim
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort()
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

_cache = os.environ.setdefault("LLM_TEST_COMPILATION_CACHE", "off")
if _cache != "off":
    _stat = Path(_cache).stat() if Path(_cache).is_dir() else None
    if _stat and hasattr(os, "getuid") and (_stat.st_uid != os.getuid() or _stat.st_mode & 0o002):
        raise RuntimeError(
            f"compilation cache {_cache} is not owned by this user or is world-writable; "
            "remove it or set LLM_TEST_COMPILATION_CACHE to a private folder (or off)"
        )
    if "PYTEST_XDIST_WORKER" not in os.environ and _stat:
        _trim(Path(_cache), MAX_CACHE_BYTES)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny programs too

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops jax's compiled programs after each test module.

    Every XLA:CPU executable maps its machine code into a few memory regions (about 3 per
    program, measured), and jitted functions defined at module level (`init_params`, the
    steps, with each test's config as a static argument) keep theirs for the life of the
    process. An xdist worker runs ~150 test files, and the training ones add ~300 regions each
    (tests/train/test_loop.py, test_resume.py: measured), which nears Linux's
    `vm.max_map_count` (65530): twice (2026-12-07) a worker died of a segmentation fault near
    the end of the suite, in a different test each time (test_grpo.py, test_baselines_train.py),
    both passing alone.
    Clearing the caches per module keeps a worker near a few thousand regions; a module's
    own tests still share their compiles.
    """
    yield
    jax.clear_caches()
    gc.collect()
