"""Feature extraction sharded across the processes of a torchrun job.

Run the same command under ``torchrun --nproc_per_node N [--nnodes M ...]``; every rank calls
:func:`extract_features_distributed` with the same image list and the same backbone weights:

1. Every file is hashed once (rank ``r`` hashes files ``r, r+W, r+2W, ...``) and the sha256s are
   shared with all ranks, so every rank knows every image's content key.
2. Image ``i`` belongs to rank ``int(sha256[:16], 16) % W``: shards depend on the bytes of the
   images only, never on the order of the paths, so a rerun with the same world size gives each
   rank the same images (and finds them in its cache).
3. Each rank extracts its shard with :func:`~transferkit.features.extract.extract_features`,
   writing into the feature cache batch by batch.
4. The features come together on rank 0 (``everywhere=True``: on every rank):

   - **one machine, one cache** (every rank reports the same host and the same cache directory):
     rank 0 reads the other ranks' rows from the SQLite cache, which WAL mode makes safe for
     concurrent writers on a local filesystem; only metadata (shard indices, errors, counts) goes
     over ``torch.distributed``.
   - **several machines, or no cache** (``--no-cache``): the rows themselves are gathered over
     ``torch.distributed`` in chunks of ``chunk_rows`` per rank (bounded transient memory). Each
     machine keeps its own cache (``$TRANSFERKIT_CACHE_DIR`` on a local disk); rank 0 also stores
     what it receives in its own cache, so a later single-machine run there is warm.

   SQLite in WAL mode must not be shared between machines over NFS or another network
   filesystem: give each node its own local cache directory.

Rank 0 gets the same :class:`~transferkit.features.extract.Features` one process would get (same
row order, same ``ok`` and ``errors``); the other ranks get ``None`` unless ``everywhere=True``.
With the ONNX Runtime CPU engine the rows are bit-identical to a one-process run; eager PyTorch
can differ in the last bits because the batches are made of other images.

The collectives run on a gloo group of their own (CPU objects, whatever the default backend) with
a long timeout (``$TRANSFERKIT_DIST_TIMEOUT`` seconds, default 6 hours): ranks that finish their
shard early wait for the slowest one. Outside torchrun (``WORLD_SIZE`` unset or 1) everything here
is a plain single-process call and PyTorch is not even imported.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.features.cache import FeatureCache
from transferkit.features.extract import Features, ProgressCallback, extract_features, model_cache_key

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 6 * 3600
_CHUNK_ROWS = 4096
_group = None  # the gloo group the helpers here communicate on (created by every rank, in order)


class DistributedError(TransferkitError):
    """The ranks of a torchrun job disagree, or torch.distributed cannot be used."""


@dataclass(frozen=True)
class World:
    """Where this process stands in a torchrun job (``World()``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise DistributedError(f"${name}={os.environ[name]!r} is not an integer") from None


def _timeout() -> timedelta:
    return timedelta(seconds=_env_int("TRANSFERKIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def _initialised() -> bool:
    dist = sys.modules.get("torch.distributed")  # never import torch just to learn there is no job
    return dist is not None and dist.is_available() and dist.is_initialized()


def world(*, init: bool = True, device: str | None = None) -> World:
    """This process's rank and the job's size, from an initialised process group or torchrun's env.

    Args:
        init: join the process group torchrun describes (``WORLD_SIZE`` > 1) if nobody has yet:
            NCCL when this rank will use CUDA, gloo otherwise.
        device: the device this rank will compute on (``None``/``"auto"``: CUDA when available).

    Raises:
        DistributedError: ``WORLD_SIZE`` > 1 but torch.distributed is unavailable.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    if _initialised():
        import torch.distributed as dist

        return World(dist.get_rank(), dist.get_world_size(), local_rank, local_world, str(dist.get_backend()))
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    rank = _env_int("RANK", 0)
    if not init:
        return World(rank, size, local_rank, local_world, None)
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_nccl = torch.cuda.is_available() and not str(device or "auto").startswith("cpu")
    if use_nccl:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "nccl" if use_nccl else "gloo"
    dist.init_process_group(backend=backend, timeout=_timeout())
    atexit.register(_leave)
    log.info("distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return World(dist.get_rank(), dist.get_world_size(), local_rank, local_world, backend)


def _leave() -> None:
    global _group
    if _initialised():
        import torch.distributed as dist

        _group = None
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 of a torchrun job, and in a plain single process."""
    return world(init=False).is_main


def _comm_group():
    """A gloo group over all ranks with the long timeout (so CPU objects travel whatever the backend)."""
    global _group
    import torch.distributed as dist

    if _group is None:
        if not _initialised():
            world(init=True)
        _group = dist.new_group(backend="gloo", timeout=_timeout())
    return _group


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process).

    The wait is as long as ``$TRANSFERKIT_DIST_TIMEOUT`` (default 6 hours), so rank 0 may evaluate
    and save while the others wait.
    """
    if not world(init=False).enabled:
        return
    import torch.distributed as dist

    dist.barrier(group=_comm_group())


def broadcast_from_main(obj):
    """``obj`` as rank 0 has it, on every rank (itself in a single process): a decision made once."""
    if not world(init=False).enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_comm_group())
    return box[0]


def shard_of(content_hash: str | None, world_size: int) -> int:
    """The rank that extracts the image with this sha256 (unreadable files, ``None``: rank 0)."""
    if not content_hash or world_size <= 1:
        return 0
    return int(content_hash[:16], 16) % world_size


def _hash_files(paths: list[Path], store: FeatureCache | None) -> list[str | None]:
    if store is not None:
        return store.content_hashes(paths)  # memoised in the cache: a rerun only stats the files
    from transferkit.backbones.weights import sha256_of_bytes

    out: list[str | None] = []
    for p in paths:
        try:
            out.append(sha256_of_bytes(p))
        except OSError:
            out.append(None)
    return out


def _rank_device(device: str | None, w: World) -> str | None:
    """This rank's own GPU (``LOCAL_RANK``) when the device is left to choose and CUDA is here."""
    import torch

    if device in (None, "auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank % torch.cuda.device_count()}"
    return device


@contextlib.contextmanager
def _cpu_share(w: World, affinities_differ: bool, on_gpu: bool):
    """Run on this rank's share of the machine's cores, so N ranks do not start N x cores threads.

    Threads started inside (decoders, engine thread pools, which size themselves from the
    affinity) inherit it; the calling thread gets its cores back afterwards. Left alone on a GPU,
    with one rank per machine, or when the launcher already gave the ranks different cores.
    """
    get, put = getattr(os, "sched_getaffinity", None), getattr(os, "sched_setaffinity", None)
    if on_gpu or get is None or put is None or w.local_world_size <= 1 or affinities_differ:
        yield
        return
    cores = sorted(get(0))
    share = cores[w.local_rank % w.local_world_size :: w.local_world_size] or cores
    put(0, share)
    log.info("rank %d extracts on %d of this machine's %d cores", w.rank, len(share), len(cores))
    try:
        yield
    finally:
        put(0, cores)


def _gather_rows(group, send_idx: np.ndarray, X: np.ndarray, counts: list[int], chunk_rows: int, everywhere: bool,
                 is_main: bool, sink) -> None:
    """Send this rank's rows ``X[send_idx]`` in rounds of ``chunk_rows``; ``sink(indices, rows)`` receives them."""
    import torch.distributed as dist

    rounds = max((-(-c // chunk_rows) for c in counts), default=0)
    for k in range(rounds):
        part = slice(k * chunk_rows, (k + 1) * chunk_rows)
        payload = (send_idx[part], X[part])
        if everywhere:
            received: list = [None] * len(counts)
            dist.all_gather_object(received, payload, group=group)
        else:
            received = [None] * len(counts) if is_main else None
            dist.gather_object(payload, received, dst=0, group=group)
        if received is not None:
            for got in received:
                if got is not None and len(got[0]):
                    sink(*got)


def extract_features_distributed(
    paths: Sequence[str | Path],
    backbone,
    *,
    cache: FeatureCache | bool | None = True,
    progress: ProgressCallback | None = None,
    device: str | None = None,
    everywhere: bool = False,
    chunk_rows: int = _CHUNK_ROWS,
    **extract_options,
) -> Features | None:
    """:func:`~transferkit.features.extract.extract_features`, each rank of a torchrun job doing a shard.

    Every rank must call it with the same ``paths`` and a backbone with the same weights. Outside
    torchrun it is exactly ``extract_features``. See the module docstring for how shards are chosen
    and how the features come together.

    Args:
        paths, backbone, cache, device: as for ``extract_features``. ``device=None`` puts each
            rank on its own GPU (``LOCAL_RANK``) when CUDA is available; on the CPU the machine's
            cores are shared among its ranks.
        extract_options: the other ``extract_features`` arguments (``engine``, ``batch_size``,
            ``workers``, ``decode_options``, ...), the same on every rank.
        progress: called on rank 0 only; counts before the end are estimated from rank 0's shard.
        everywhere: return the features on every rank (costs ``N x D`` floats per rank), not only on rank 0.
        chunk_rows: rows per rank and round when rows travel over torch.distributed.

    Returns:
        the :class:`Features` of all ``paths`` on rank 0 (on every rank with ``everywhere``),
        ``None`` on the other ranks.

    Raises:
        DistributedError: the ranks have different image lists, backbone weights, or computed
            features of different kinds (another engine precision).
    """
    w = world(init=True, device=device)
    if not w.enabled:
        return extract_features(paths, backbone, cache=cache, progress=progress, device=device, **extract_options)
    import torch.distributed as dist

    t0 = time.perf_counter()
    group = _comm_group()
    paths = [Path(p) for p in paths]
    n = len(paths)
    store = FeatureCache() if cache is True else (cache or None)
    weights_key = model_cache_key(backbone)  # the same on every rank or the shards would not fit together
    engine = extract_options.get("engine", "auto")
    decode_options = extract_options.get("decode_options")

    # 1. Content keys: each rank hashes every W-th file; everyone learns all of them.
    mine_to_hash = list(range(w.rank, n, w.world_size))
    here = {
        "n": n,
        "model_key": weights_key,
        "hashes": _hash_files([paths[i] for i in mine_to_hash], store),
        "where": (socket.gethostname(), str(store.directory.resolve()) if store is not None else None),
        "cores": (socket.gethostname(), tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()),
    }
    everyone: list = [None] * w.world_size
    dist.all_gather_object(everyone, here, group=group)
    if len({e["n"] for e in everyone}) > 1:
        raise DistributedError(f"the ranks were given different image lists ({sorted({e['n'] for e in everyone})} images)")
    if len({e["model_key"] for e in everyone}) > 1:
        raise DistributedError("the ranks built backbones with different weights; every rank must load the same ones (same --weights and --seed)")
    hashes: list[str | None] = [None] * n
    for r, e in enumerate(everyone):
        for i, h in zip(range(r, n, w.world_size), e["hashes"]):
            hashes[i] = h
    # One cache file for all ranks only when they all run on this host and name the same directory.
    shared = store is not None and len({e["where"] for e in everyone}) == 1
    host = socket.gethostname()
    affinities_differ = len({e["cores"] for e in everyone if e["cores"][0] == host}) > 1
    del everyone, here

    # 2. This rank's shard, by content key.
    owner = np.fromiter((shard_of(h, w.world_size) for h in hashes), dtype=np.int64, count=n)
    mine = np.flatnonzero(owner == w.rank)
    run_device = _rank_device(device, w) if isinstance(engine, str) else device
    on_gpu = str(run_device or "").startswith("cuda")
    shard_progress = None
    if progress is not None and w.is_main:
        def shard_progress(done: int, total: int) -> None:  # estimated: the other shards go about as fast
            progress(min(n, round(done * n / total)) if total else 0, n)

    with _cpu_share(w, affinities_differ, on_gpu):
        sub = extract_features([paths[i] for i in mine], backbone, cache=store, progress=shard_progress, device=run_device,
                               **extract_options)
    key = sub.model_key  # what the features were cached under (it includes the engine's precision)

    # 3. Which of this rank's rows must travel: all of them, unless rank 0 can read them from the cache.
    ok_local = np.flatnonzero(sub.ok)
    usable = store is not None and getattr(store, "available", True)  # a cache that failed stores nothing
    uncached = ok_local if not usable else np.zeros(0, dtype=np.int64)
    if usable and (decode_options or {}).get("allow_truncated"):
        # Files read only because allow_truncated was given are not cached (see extract_features).
        present = store.get_many(key, [hashes[mine[j]] for j in ok_local])
        uncached = np.array([j for j in ok_local if hashes[mine[j]] not in present], dtype=np.int64)
        del present
    meta = {"indices": mine, "ok": sub.ok, "uncached": mine[uncached], "errors": sub.errors, "stats": sub.stats,
            "usable": usable, "key": key}
    metas: list = [None] * w.world_size
    dist.all_gather_object(metas, meta, group=group)
    if len({m["key"] for m in metas}) > 1:
        raise DistributedError("the ranks computed features of different kinds (engine precisions differ); "
                               "pass an explicit engine and precision")
    shared = shared and all(m["usable"] for m in metas)
    send = uncached if shared else ok_local
    counts = [len(m["uncached"]) if shared else int(m["ok"].sum()) for m in metas]
    if not everywhere:
        counts[0] = 0  # rank 0 has its own rows already
        if w.is_main:
            send = send[:0]

    want = w.is_main or everywhere
    X = ok = None
    if want:
        X = np.full((n, backbone.spec.num_features), np.nan, dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        X[mine[ok_local]] = sub.X[ok_local]
        ok[mine[ok_local]] = True
    not_to_cache = {int(i) for m in metas for i in m["uncached"]}

    def sink(indices: np.ndarray, rows: np.ndarray) -> None:
        X[indices] = rows
        ok[indices] = True
        if store is not None and not shared and w.is_main:  # keep what other machines computed here too
            store.put_many(key, ((hashes[i], X[i]) for i in indices if int(i) not in not_to_cache and hashes[i]))

    sub_X = sub.X
    del sub
    _gather_rows(group, mine[send], sub_X[send], counts, max(1, int(chunk_rows)), everywhere, w.is_main, sink)
    del sub_X

    if not want:
        return None
    if shared:
        # The other ranks' cached rows, read in chunks (never all blobs at once next to X).
        todo = [int(i) for r, m in enumerate(metas) if r != w.rank for i in m["indices"][m["ok"]] if int(i) not in not_to_cache]
        for start in range(0, len(todo), chunk_rows):
            part = todo[start : start + chunk_rows]
            found = store.get_many(key, [hashes[i] for i in part])
            missing = [i for i in part if hashes[i] not in found]
            if missing:
                raise DistributedError(
                    f"rank {w.rank} cannot find {len(missing)} features the other ranks wrote to the cache {store.directory}; "
                    "do all ranks see the same $TRANSFERKIT_CACHE_DIR on a local filesystem?")
            for i in part:
                X[i] = found[hashes[i]]
                ok[i] = True
    errors: dict[str, str] = {}
    for m in metas:
        errors.update(m["errors"])
    errors = {str(p): errors[str(p)] for p in paths if str(p) in errors}  # one process's order
    rates = [m["stats"].get("images_per_s_computed") for m in metas]
    stats = {
        "images": n,
        "cached": sum(m["stats"]["cached"] for m in metas),
        "computed": sum(m["stats"]["computed"] for m in metas),
        "failed": len(errors),
        "engine": metas[0]["stats"]["engine"],
        "seconds": round(time.perf_counter() - t0, 4),
        "images_per_s_computed": round(sum(r for r in rates if r), 2) if any(rates) else None,
        "world_size": w.world_size,
        "shards": [len(m["indices"]) for m in metas],
        "gathered_rows": int(sum(counts)),
        "shared_cache": shared,
    }
    if progress is not None:
        progress(n, n)
    log.info("features (%d ranks): %s", w.world_size, stats)
    return Features(X=X, ok=ok, errors=errors, model_key=key, stats=stats)


__all__ = ["DistributedError", "World", "barrier", "broadcast_from_main", "extract_features_distributed", "is_main_process", "shard_of", "world"]
