"""Sharded extraction under torchrun: 2 CPU processes (gloo) give one process's features, bit for bit."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from transferkit.features.distributed import World, barrier, extract_features_distributed, is_main_process, shard_of, world

# ONNX Runtime on the CPU gives the same bits whatever the batch and thread count; "auto" may pick
# another engine for a 1-core rank than for a 2-core process.
ENGINE = "onnxruntime"

_SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
from test_features_distributed import ranked_run
ranked_run(sys.argv[1], sys.argv[2])
"""


def _image_paths(folder: Path) -> list[Path]:
    """The 18 tiny images plus one file that is not an image."""
    broken = folder / "class_0" / "broken.jpg"
    if not broken.exists():
        broken.write_bytes(b"not a jpeg at all")
    return sorted(folder.glob("*/*.jpg"))


def _cut_file(folder: Path) -> Path:
    """A JPEG cut short (readable only with allow_truncated) whose content puts it in rank 1's shard."""
    cut = folder.parent / "lenient" / "cut.jpg"
    if not cut.exists():
        from transferkit.backbones.weights import sha256_of_bytes

        cut.parent.mkdir(exist_ok=True)
        data = (folder / "class_1" / "img_0.jpg").read_bytes()
        for keep in range(len(data) * 2 // 3, len(data) // 3, -7):
            cut.write_bytes(data[:keep])
            if shard_of(sha256_of_bytes(cut), 2) == 1:
                break
    return cut


def ranked_run(folder: str, out: str) -> None:
    """What every rank runs: cached, warm-cached, uncached and uncached-everywhere extraction."""
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.features.cache import FeatureCache
    from transferkit.features.distributed import barrier, world

    torch.set_num_threads(1)
    paths = _image_paths(Path(folder))
    bb = create_backbone("test_efficientnet", weights="none", image_size=32)
    rank = world().rank
    results = {
        "cached": extract_features_distributed(paths, bb, cache=True, batch_size=4, engine=ENGINE),
        "warm": extract_features_distributed(paths, bb, cache=True, batch_size=4, engine=ENGINE),
        # A file read only under allow_truncated is never cached: its row travels to rank 0 instead.
        "lenient": extract_features_distributed([*paths, _cut_file(Path(folder))], bb, cache=True, batch_size=4, engine=ENGINE,
                                                decode_options={"allow_truncated": True}),
        "nocache": extract_features_distributed(paths, bb, cache=False, batch_size=4, engine=ENGINE),
        # Each rank its own cache, as on several machines: rows travel, rank 0 keeps them all.
        "pernode": extract_features_distributed(paths, bb, cache=FeatureCache(Path(out) / f"cache{rank}"), batch_size=4, engine=ENGINE),
        "everywhere": extract_features_distributed(paths, bb, cache=False, batch_size=4, everywhere=True, chunk_rows=3, engine=ENGINE),
    }
    arrays, meta = {}, {"world": world().world_size, "main": is_main_process()}
    for name, f in results.items():
        meta[name] = None if f is None else {"errors": f.errors, "stats": f.stats}
        if f is not None:
            arrays[f"{name}_X"], arrays[f"{name}_ok"] = f.X, f.ok
    np.savez(Path(out) / f"rank{rank}.npz", **arrays)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(meta))
    barrier()


def test_shards_depend_on_content_not_on_order():
    hashes = [f"{random.Random(i).getrandbits(256):064x}" for i in range(200)]
    owners = {h: shard_of(h, 3) for h in hashes}
    shuffled = hashes[:]
    random.Random(1).shuffle(shuffled)
    assert {h: shard_of(h, 3) for h in shuffled} == owners
    assert set(owners.values()) == {0, 1, 2}
    assert shard_of(None, 3) == 0 and shard_of(hashes[0], 1) == 0


def test_single_process_is_plain_extraction(tiny_image_folder, tiny_backbone, monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    from transferkit.features.extract import extract_features

    assert world() == World() and is_main_process()
    barrier()  # a no-op
    paths = _image_paths(tiny_image_folder)
    one = extract_features(paths, tiny_backbone, cache=False, batch_size=4, engine=ENGINE)
    same = extract_features_distributed(paths, tiny_backbone, cache=False, batch_size=4, engine=ENGINE)
    assert np.array_equal(one.X, same.X, equal_nan=True) and np.array_equal(one.ok, same.ok) and one.errors == same.errors


def test_is_main_process_reads_torchrun_env_without_a_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert world(init=False) == World(rank=1, world_size=2)
    assert not is_main_process()


def test_two_cpu_processes_match_one_process_bit_for_bit(tiny_image_folder, tiny_backbone, tmp_path):
    paths = _image_paths(tiny_image_folder)
    cut = _cut_file(tiny_image_folder)
    script = tmp_path / "shard.py"
    script.write_text(_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # TRANSFERKIT_CACHE_DIR: this test's empty cache
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                           str(tiny_image_folder), str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from transferkit.features.cache import FeatureCache
    from transferkit.features.extract import extract_features

    one = extract_features(paths, tiny_backbone, cache=False, batch_size=4, engine=ENGINE)
    assert one.ok.sum() == 18 and list(one.errors) == [str(tiny_image_folder / "class_0" / "broken.jpg")]
    r0, r1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    m0, m1 = json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text())
    assert m0["world"] == m1["world"] == 2 and m0["main"] and not m1["main"]
    for name in ("cached", "warm", "nocache", "pernode", "everywhere"):  # "lenient" has one more image: below
        assert np.array_equal(r0[f"{name}_X"], one.X, equal_nan=True), name
        assert np.array_equal(r0[f"{name}_ok"], one.ok), name
        assert m0[name]["errors"] == one.errors, name
        assert m0[name]["stats"]["shards"][0] + m0[name]["stats"]["shards"][1] == 19
    # Rank 1 gets None, except with everywhere=True.
    assert m1["cached"] is None and m1["nocache"] is None
    assert np.array_equal(r1["everywhere_X"], one.X, equal_nan=True)
    # Each image was computed once (not once per rank), and the rerun found them all in the shared cache.
    assert m0["cached"]["stats"]["computed"] == 18 and m0["cached"]["stats"]["shared_cache"]
    assert m0["cached"]["stats"]["gathered_rows"] == 0  # rank 0 read rank 1's rows from the cache
    assert m0["warm"]["stats"]["computed"] == 0 and m0["warm"]["stats"]["cached"] == 18
    lenient = extract_features([*paths, cut], tiny_backbone, cache=False, batch_size=4, engine=ENGINE, decode_options={"allow_truncated": True})
    assert lenient.ok[-1] and np.array_equal(r0["lenient_X"], lenient.X, equal_nan=True) and m0["lenient"]["errors"] == lenient.errors
    assert m0["lenient"]["stats"]["computed"] == 1 and m0["lenient"]["stats"]["gathered_rows"] == 1  # rank 1 sent the cut file's row
    assert FeatureCache().info().feature_entries == 18  # ... and nobody cached it
    assert m0["nocache"]["stats"]["computed"] == 18 and not m0["nocache"]["stats"]["shared_cache"]
    # Without a cache, rank 1's decodable rows travelled over torch.distributed.
    from transferkit.backbones.weights import sha256_of_bytes

    broken_on_1 = shard_of(sha256_of_bytes(tiny_image_folder / "class_0" / "broken.jpg"), 2) == 1
    assert m0["nocache"]["stats"]["gathered_rows"] == m0["nocache"]["stats"]["shards"][1] - broken_on_1
    assert not m0["pernode"]["stats"]["shared_cache"] and m0["pernode"]["stats"]["computed"] == 18
    assert FeatureCache(out / "cache0").info().feature_entries == 18  # a later one-machine run there is warm
    assert FeatureCache(out / "cache1").info().feature_entries == m0["pernode"]["stats"]["shards"][1] - broken_on_1
