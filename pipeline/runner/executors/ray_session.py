"""Joining or starting Ray for a run. With `run.ray_address` unset, a local Ray is started on first
use and stopped when the process exits (several stages of one `infir build` share it); with an
address ("auto", "ray://head:10001"), the run joins that cluster and leaves it running."""

from __future__ import annotations

import atexit
import os

from pipeline.errors import InfirError


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise InfirError(
            "run.executor = 'ray' needs Ray: pip install 'infir[ray]' (or run.executor = 'local')"
        ) from None
    if ray.is_initialized():
        return ray
    kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            # INFIR_RAY_NUM_CPUS: a smaller local Ray on a shared machine (tests use 2).
            n = os.environ.get("INFIR_RAY_NUM_CPUS")
            ray.init(num_cpus=int(n) if n else None, **kw)
            atexit.register(ray.shutdown)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InfirError(f"run.ray_address = {address!r}: cannot start or join Ray: {e}") from None
    return ray
