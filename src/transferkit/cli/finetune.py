"""`transferkit lr-find`: the learning-rate range test for fine-tuning, with a plot."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def lr_find_command(
    data: Path = typer.Argument(..., help="dataset folder (any layout `transferkit data inspect` understands) or CSV"),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="timm name; see `transferkit backbones`"),
    weights: str = typer.Option("auto", "--weights", help="auto, a .safetensors/.pth file, package, hub, or none"),
    image_size: int = typer.Option(None, "--image-size", help="backbone input size (default: the weights' own)"),
    strategy: str = typer.Option("full", "--strategy", help="full, or cached (top blocks on cached trunk activations; CPU trick)"),
    unfreeze: str = typer.Option("all", "--unfreeze", help="layer groups trained, from the top: a number or 'all'"),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    augment: str = typer.Option("light", "--augment", help="none, light, standard or strong"),
    start_lr: float = typer.Option(1e-6, "--start-lr"),
    end_lr: float = typer.Option(1.0, "--end-lr"),
    steps: int = typer.Option(60, "--steps", min=3, help="optimisation steps in the sweep"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps"),
    seed: int = typer.Option(0, "--seed"),
    plot: Path = typer.Option(Path("lr_find.png"), "--plot", help="where to write the loss-vs-LR plot (PNG)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Sweep the learning rate exponentially, plot the loss and suggest a --lr for fine-tuning.

    The sweep trains the head and the unfrozen groups (layer-wise decayed learning rates, as
    `train --mode finetune` does) on the "train" split of DATA (all of it when it has no split).
    """
    from transferkit.data import load_images
    from transferkit.finetune import FinetuneConfig, lr_find, plot_lr_find

    output.check_format(fmt, ("table", "json"))
    images = load_images(data)
    cfg = FinetuneConfig(strategy=strategy, unfreeze=int(unfreeze) if unfreeze.isdigit() else unfreeze, batch_size=batch_size,
                         augment=augment, device=device, seed=seed, image_size=None)
    bb = backbone
    if image_size is not None:
        from transferkit.backbones import create_backbone

        bb = create_backbone(backbone, weights=weights, image_size=image_size, seed=seed)
    result = lr_find(images, cfg, backbone=bb, weights=weights, start_lr=start_lr, end_lr=end_lr, steps=steps)
    plot_lr_find(result, plot)
    if fmt == "json":
        output.print_json({**result.to_dict(), "plot": str(plot)})
    else:
        output.info(f"suggested --lr {result.suggestion:.3g} (loss lowest at {result.min_loss_lr:.3g}); plot: {plot}")
