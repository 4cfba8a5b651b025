"""DDP through torchrun: 2 CPU processes (gloo) compute the gradient one process computes on the same batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
from test_finetune_ddp import one_step
one_step(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
"""


def one_step(folder: Path, out: Path, batch: int) -> None:
    """One fine-tuning step (whole backbone trainable); saves this process's gradients and val accuracy."""
    from transferkit.backbones import create_backbone
    from transferkit.data.imageset import ImageSet
    from transferkit.finetune import FinetuneConfig, finetune

    torch.set_num_threads(1)
    paths = sorted(folder.glob("*/*.jpg"))
    names = sorted({p.parent.name for p in paths})
    split = ["val" if i % 3 == 0 else "train" for i in range(len(paths))]
    ims = ImageSet(paths, np.array([names.index(p.parent.name) for p in paths]), names, split=split)
    cfg = FinetuneConfig(epochs=1, head_epochs=0, unfreeze="all", batch_size=batch, augment="none", max_steps_per_epoch=1,
                         grad_clip=None, patience=None, device="cpu", seed=0, checkpoint_dir=str(out / "ck"))
    grads: dict[str, torch.Tensor] = {}

    def grab(info):
        grads.update({n: p.grad.detach().clone() for n, p in info.module.named_parameters() if p.grad is not None})

    fit = finetune(ims, cfg, backbone=create_backbone("test_efficientnet", weights="none", image_size=32), on_step=grab)
    _model, history = fit.model, fit.history
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    torch.save({"grads": grads, "val_acc": history[-1]["val_acc"], "world": world}, out / f"rank{rank}.pt")


def test_ddp_two_cpu_processes_match_one_process_gradient(tiny_image_folder, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(_SCRIPT.format(tests_dir=str(Path(__file__).parent)))
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    # 2 processes x 4 images: DistributedSampler gives rank r the indices perm[r::2], so together the
    # first step covers perm[0:8], exactly the one-process batch of 8.
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                           str(tiny_image_folder), str(tmp_path / "ddp"), "4"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    try:
        one_step(tiny_image_folder, tmp_path / "single", 8)
    finally:
        torch.set_num_threads(threads)
    r0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    assert r0["world"] == 2 and one["world"] == 1
    assert set(r0["grads"]) == set(one["grads"]) and len(one["grads"]) > 10
    for name, g in one["grads"].items():
        assert torch.allclose(r0["grads"][name], g, rtol=1e-4, atol=1e-6), name
        assert torch.equal(r0["grads"][name], r1["grads"][name]), name  # all-reduced: identical on every rank
    assert r0["val_acc"] == r1["val_acc"]  # validation metrics are all-reduced too
    # Only rank 0 writes checkpoints.
    assert sorted(p.name for p in (tmp_path / "ddp" / "ck").iterdir()) == ["best.pt", "last.pt"]
