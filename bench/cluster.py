"""Multi-process runs on JAX's own distributed runtime (``jax.distributed``).

Every process expands the same spec; the families of cells still to run are split over the
processes by estimated cost (longest first, each to the least loaded process: deterministic,
and within 4/3 of the best split); each process compiles and runs only its own families and
writes their parts into the shared run directory. Process 0 creates (or resumes) the run
directory, holds its lock and manifest, tells the others where it is and which cells are
finished, and after a barrier merges the parts and draws the report.

The coordination service's key-value store and barriers carry everything the processes share;
no device collective is used, so this works on any backend, CPU included.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Hashable, NamedTuple, Sequence

# Cost model of a family: its cells' analytic FLOPs at a nominal rate plus a fixed compile
# time. Fixed (not measured) so that every process computes the same split.
NOMINAL_FLOPS_PER_S = 1e11
COMPILE_S = 2.0
_PREFIX = "associative-memory-bench"


class ClusterError(RuntimeError):
    """Joining or synchronising the processes failed; the message names what and the fix."""


class Cluster(NamedTuple):
    """This process's place in a run: its index, the process count, how long to wait for the
    others, and the coordination-service client (None when alone)."""

    process: int
    processes: int
    timeout_s: float
    barrier_timeout_s: float
    client: Any = None

    @property
    def leader(self) -> bool:
        return self.process == 0

    def publish(self, key: str, value: Any) -> None:
        if self.client is not None:
            self.client.key_value_set(f"{_PREFIX}/{key}", json.dumps(value))

    def fetch(self, key: str, what: str) -> Any:
        """The value process 0 (or another) published under ``key``, waiting up to timeout_s."""
        try:
            return json.loads(self.client.blocking_key_value_get(f"{_PREFIX}/{key}", int(self.timeout_s * 1000)))
        except Exception as e:  # the runtime raises its own status errors
            raise ClusterError(f"process {self.process}: waited {self.timeout_s:g} s for {what} from process 0 "
                               f"({_first_line(e)}); check that every process runs the same command") from e

    def barrier(self, name: str, timeout_s: float | None = None) -> None:
        if self.client is None:
            return
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            self.client.wait_at_barrier(f"{_PREFIX}/{name}", int(timeout_s * 1000))
        except Exception as e:
            raise ClusterError(f"process {self.process}: not every process reached '{name}' within {timeout_s:g} s "
                               f"({_first_line(e)})") from e


ALONE = Cluster(0, 1, 0.0, 0.0)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def join(coordinator: str | None, processes: int | None, process: int | None, timeout_s: float,
         barrier_timeout_s: float) -> Cluster:
    """Initialise jax.distributed, before any JAX computation. Without coordinator, process
    count and id, jax.distributed.initialize detects them (SLURM, Open MPI, Cloud TPU, ...).
    A process other than 0 first waits (up to timeout_s) until the coordinator's port accepts
    connections, so a coordinator that never appears is one clear error, not the runtime's
    abort."""
    given = [coordinator is not None, processes is not None, process is not None]
    if any(given) and not all(given):
        raise ClusterError("--coordinator, --num-processes and --process-id go together: give all three, or none "
                           "to let jax.distributed detect them")
    if processes is not None and processes < 1:
        raise ClusterError(f"--num-processes {processes}: use a whole number >= 1")
    if process is not None and not 0 <= process < processes:
        raise ClusterError(f"--process-id {process}: use 0..{processes - 1} (one per process)")
    if not (timeout_s > 0 and barrier_timeout_s > 0):
        raise ClusterError("--connect-timeout and --barrier-timeout: use seconds > 0")
    if coordinator is not None:
        host, port = _address(coordinator)
        if process != 0:
            _wait_for(host, port, timeout_s)
    import sys

    import jax

    where = f" through {coordinator}" if coordinator else " (cluster detected by jax.distributed)"
    print(f"run_all.py: joining the run's processes{where}; waiting up to {timeout_s:g} s for all of them (JAX's "
          "runtime ends every process if one is missing or dies)", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(coordinator, processes, process, initialization_timeout=max(1, int(timeout_s)))
    except (ValueError, RuntimeError) as e:
        raise ClusterError(f"jax.distributed.initialize: {_first_line(e)}; pass --coordinator HOST:PORT "
                           "--num-processes P --process-id I where no cluster is detected") from e
    from jax._src import distributed  # the coordination-service client (key-value store, barriers)

    return Cluster(jax.process_index(), jax.process_count(), timeout_s, barrier_timeout_s,
                   distributed.global_state.client)


def _address(coordinator: str) -> tuple[str, int]:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--coordinator {coordinator!r}: give HOST:PORT, e.g. 10.0.0.1:1234 (process 0's host)")
    return host.strip("[]"), int(port)


def _wait_for(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise ClusterError(f"no coordinator at {host}:{port} after {timeout_s:g} s; start process 0 (it hosts "
                                   "the coordinator) with the same --coordinator, or fix the address") from None
            time.sleep(0.2)


def split(costs: Sequence[tuple[Hashable, float]], processes: int) -> dict[Hashable, int]:
    """Assign each item (a family, with its estimated cost) to a process: longest first, each
    to the least loaded process (ties: the lower index). Deterministic for a given input order."""
    load = [0.0] * processes
    owner = {}
    for key, cost in sorted(costs, key=lambda kc: -kc[1]):  # sorted is stable: ties keep input order
        p = min(range(processes), key=lambda i: (load[i], i))
        owner[key] = p
        load[p] += cost
    return owner


def loads(costs: Sequence[tuple[Hashable, float]], owner: dict[Hashable, int], processes: int) -> list[float]:
    load = [0.0] * processes
    for key, cost in costs:
        load[owner[key]] += cost
    return load
