"""The ``vitattn`` command: ``vitattn show IMAGE --model NAME [--weights PATH] [--out FILE]``.

Renders one image's layers x heads grid of CLS heatmaps (the reference notebook's figure)
with the plugin's extraction and the report's look. Settings are checked by the same
parsers as the plugin's options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pytest_vitattn import options

DEFAULT_OUT = "vitattn-grid.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitattn", description="CLS attention of timm Vision Transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "show",
        help="render one image's layers x heads grid of CLS heatmaps",
        description="Render one image's layers x heads grid of CLS heatmaps (columns: "
        "the image, every head, the head mean and rollout).",
    )
    show.add_argument("image", type=Path, help="the image (any format PIL reads)")
    show.add_argument(
        "--model", type=options.parse_model, default=options.DEFAULT_MODEL, metavar="NAME"
    )
    show.add_argument(
        "--weights",
        type=options.parse_weights,
        default="pretrained",
        metavar="pretrained|random|PATH",
    )
    show.add_argument(
        "--model-kwargs", type=options.parse_model_kwargs, default=None, metavar="KEY=VALUE,..."
    )
    show.add_argument(
        "--model-factory", type=options.parse_factory, default=None, metavar="MODULE:FUNCTION"
    )
    show.add_argument("--device", type=options.parse_device, default="cpu")
    show.add_argument("--preprocess", choices=("resize", "center-crop"), default="resize")
    show.add_argument(
        "--rollout", type=options.parse_rollout, default="mean", metavar="mean|max|min|none"
    )
    show.add_argument("--token", type=options.parse_token, default="cls", metavar="cls|dist|INDEX")
    show.add_argument("--threads", type=options.parse_threads, default="auto", metavar="auto|N")
    show.add_argument(
        "--scale",
        choices=("shared", "own"),
        default="shared",
        help="grid.png colours: shared (default, as the report: multiples of uniform "
        "attention, so a near-uniform head looks flat) or own (each map its own min..max, "
        "as the notebook's imshow)",
    )
    show.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="FILE",
        help="grid.png (the grid), report.html (the report's page for this image), "
        "maps.npy (layers, heads, h, w) or maps.npz (maps, rollout, prefix_share)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pytest_vitattn.errors import VitAttnError
    from pytest_vitattn.show import show

    # A factory's module is imported from the working directory, as pytest does from rootdir.
    sys.path.insert(0, os.getcwd())
    try:
        attention = show(
            args.image,
            args.out,
            model=args.model,
            weights=args.weights,
            model_kwargs=args.model_kwargs,
            model_factory=args.model_factory,
            device=args.device,
            preprocess=args.preprocess,
            rollout=args.rollout,
            token=args.token,
            threads=args.threads,
            colour_scale=args.scale,
        )
    except VitAttnError as error:
        print(f"vitattn: {error}", file=sys.stderr)
        return 2
    if attention.ragged:  # a grid and head count per layer
        from pytest_vitattn.maps import grids_text

        heads = "/".join(str(h) for h in dict.fromkeys(attention.heads_per_layer))
        patches = grids_text(attention.grids)
        print(
            f"vitattn: {_layers_text(attention)} x {heads} heads of "
            f"{attention.model_name} on {attention.image_label} ({patches}): {args.out}"
        )
        return 0
    print(
        f"vitattn: {_layers_text(attention)} x {attention.num_heads} heads of "
        f"{attention.model_name} on {attention.image_label} ({attention.grid[0]}x"
        f"{attention.grid[1]} patches): {args.out}"
    )
    if args.rollout is not None and attention.rollout_maps is None:
        print(
            f"vitattn: no rollout column: rollout is not defined for {attention.model_name} "
            "(its layers are not square self-attention over the same tokens in every block, "
            "or some blocks have no CLS attention over the patches)"
        )
    return 0


def _layers_text(attention) -> str:
    """ "12 layers", "1 layer (block 5)": the count, and the blocks when some are left out."""
    count = attention.num_layers
    text = f"{count} layer" + ("" if count == 1 else "s")
    blocks = attention.layer_blocks
    if blocks is not None:
        text += f" ({'block' if count == 1 else 'blocks'} {', '.join(map(str, blocks))})"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
