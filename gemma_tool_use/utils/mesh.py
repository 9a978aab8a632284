"""Devices and mesh from the `tpu` config group.

Order matters: XLA flags for simulated CPU devices and jax.distributed.initialize() must run
before JAX creates its backends, so `prepare_runtime` is called before anything touches
jax.devices().
"""

from __future__ import annotations

import logging
import math
import os
import re

from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)


class MeshError(UserError, RuntimeError):
    """The requested device layout does not match the machine."""


def visible_platforms() -> list[str]:
    """The platforms JAX can run on here (default backend first), e.g. ['cpu']."""
    import jax

    seen = [jax.default_backend()]
    for p in ("tpu", "gpu", "cpu"):
        if p in seen:
            continue
        try:
            if jax.devices(p):
                seen.append(p)
        except RuntimeError:  # "Unknown backend" / "Backend 'gpu' failed to initialize"
            pass
    return seen


def check_platform(tpu_cfg) -> None:
    """The host has the platform `tpu=<name>` asks for, and JAX runs on it by default."""
    import jax

    backend = jax.default_backend()
    if backend != tpu_cfg.platform:
        raise MeshError(
            f"tpu={tpu_cfg.get('name', tpu_cfg.platform)} needs platform '{tpu_cfg.platform}', but JAX runs on "
            f"'{backend}' here (platforms JAX sees: {', '.join(visible_platforms())}; {jax.device_count()} device(s)); "
            + (f"choose tpu={backend} here" if backend in ("cpu", "gpu") else f"choose a tpu= layout for '{backend}'")
            + ", or run on the matching hardware"
        )


COMPILE_CACHE_MIN_SECS_ENV = "GTU_COMPILE_CACHE_MIN_SECS"


def compile_cache_min_seconds() -> float:
    """Programs that compiled faster than this are not written to the persistent cache (2 s;
    GTU_COMPILE_CACHE_MIN_SECS overrides it)."""
    return float(os.environ.get(COMPILE_CACHE_MIN_SECS_ENV, "2.0"))


def prepare_runtime(tpu_cfg) -> None:
    """Set XLA flags / multi-host init. Idempotent; errors clearly if JAX already started
    with a different device count than requested."""
    n = int(tpu_cfg.simulated_devices or 0)
    if n > 0:
        if tpu_cfg.platform != "cpu":
            raise MeshError(f"tpu.simulated_devices={n} only applies to tpu.platform=cpu (got {tpu_cfg.platform})")
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    cache_dir = getattr(tpu_cfg, "compilation_cache_dir", None)
    if cache_dir:
        cache_dir = os.path.expanduser(str(cache_dir))
        os.makedirs(cache_dir, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Only programs that took a while to compile: the cache stays small. The test suite sets
        # GTU_COMPILE_CACHE_MIN_SECS=0 so its many CLI processes share even the tiny programs.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", compile_cache_min_seconds())
    if tpu_cfg.distributed and not _distributed_initialized():
        kwargs = {}
        if tpu_cfg.coordinator_address:
            kwargs = dict(
                coordinator_address=tpu_cfg.coordinator_address,
                num_processes=tpu_cfg.num_processes,
                process_id=tpu_cfg.process_id,
            )
        if tpu_cfg.platform == "cpu":  # CPU processes exchange gradients through gloo (XLA's CPU collectives)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        log.info("jax.distributed.initialize(%s)", kwargs or "auto-detect")
        jax.distributed.initialize(**kwargs)
    check_platform(tpu_cfg)
    if n > 0 and jax.device_count() != n:
        raise MeshError(
            f"tpu.simulated_devices={n} but JAX already started with {jax.device_count()} devices; "
            "simulated devices must be set before JAX initialises (run in a fresh process)"
        )


def _distributed_initialized() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.client is not None
    except Exception:  # private API moved: assume not initialised
        return False


def resolve_axis_sizes(axis_sizes, n_devices: int) -> tuple[int, ...]:
    sizes = [int(s) for s in axis_sizes]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise MeshError(f"tpu.axis_sizes {sizes}: {n_devices} devices do not divide by {fixed}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise MeshError(f"tpu.axis_sizes {sizes} need {math.prod(sizes)} devices, JAX sees {n_devices}")
    return tuple(sizes)


def build_mesh(tpu_cfg):
    """A jax Mesh with Auto axis types (Explicit axes break tunix's embedding gather)."""
    import jax
    from jax.sharding import AxisType

    check_platform(tpu_cfg)
    backend = jax.default_backend()
    sizes = resolve_axis_sizes(tpu_cfg.axis_sizes, jax.device_count())
    names = tuple(tpu_cfg.axis_names)
    mesh = jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names))
    log.info(
        "mesh %s over %d %s devices (%d process(es))",
        dict(zip(names, sizes)),
        jax.device_count(),
        backend,
        jax.process_count(),
    )
    return mesh
