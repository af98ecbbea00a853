"""Census of timm's registry: is every model's CLS attention read right, or refused truly?

Walks timm's model registry, takes the smallest model (by parameter count, counted on the
meta device) of every model module and model class, plus one tiny instance of every row of
the families table (``extract.catalog``, the ViT flavours) and the models of issue 12
(``EXTRAS``: full size, odd input sizes), creates each with random weights and classifies
it:

* ``verified``: ``describe`` accepted it, and the rows of the fast path and of the fx path
  (where torch.fx can trace the model) equal the independent reference of
  ``tests/family_reference.py`` within 1e-4;
* ``WRONG``: rows were returned that differ from the reference (the worst outcome);
* ``refused``: an ``UnsupportedModelError`` or ``ImageError`` with its reason;
* ``crash``: any other exception (a raw error reaching the user);
* ``skipped``: timm itself cannot create the model (listed, not counted as ours).

Prints the counts and a markdown table. Usage::

    OMP_NUM_THREADS=1 python scripts/census.py [--only NAME ...] [--json out.json]

``tests/test_census.py`` runs ``classify`` on a fixed, fast subset in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TOLERANCE = 1e-4


@dataclass
class Outcome:
    """One model's census result.

    Attributes:
        model: timm model name.
        source: "module <name>" (smallest of its module and class) or "flavour <family>".
        cls: the model's class name.
        status: verified, WRONG, refused, crash or skipped.
        detail: the family and grid read, the max difference, or the reason.
        seconds: wall time spent on the model.
    """

    model: str
    source: str
    cls: str
    status: str
    detail: str
    seconds: float


# Models named in issue 12 (CLS-like queries that were refused, and raw errors), at their
# default configuration unless kwargs are given: each must be verified or truly refused.
EXTRAS: tuple[tuple[str, dict[str, Any], tuple[int, int] | None], ...] = (
    ("pit_ti_224", {}, None),
    ("pit_ti_distilled_224", {}, None),
    ("convit_tiny", {}, None),
    ("crossvit_tiny_240", {}, None),
    ("crossvit_9_dagger_240", {}, None),
    ("volo_d1_224", {}, None),
    ("tnt_s_legacy_patch16_224", {}, None),
    ("mvitv2_small_cls", {}, None),
    ("naflexvit_base_patch16_radio_v3", {}, None),
    ("naflexvit_base_patch16_map", {}, None),
    ("naflexvit_base_patch16_siglip", {}, None),
    ("vit_relpos_medium_patch16_cls_224", {}, None),
    ("vit_relpos_base_patch16_clsgap_224", {}, None),
    ("deit_tiny_distilled_patch16_224", {"dynamic_img_size": True}, (200, 296)),
    ("deit_tiny_distilled_patch16_224", {"dynamic_img_size": True}, (192, 288)),
    ("vit_small_patch16_224", {"dynamic_img_size": True}, (200, 300)),
    ("vit_small_r26_s32_224", {"dynamic_img_size": True}, (200, 296)),
    ("vit_small_r26_s32_224", {"dynamic_img_size": True}, (192, 288)),
)


def selection() -> list[tuple[str, str, dict[str, Any], tuple[int, int] | None]]:
    """(model, source, kwargs, input_hw) for the census: per module and class, the smallest."""
    import timm

    chosen: list[tuple[str, str, dict[str, Any], tuple[int, int] | None]] = []
    for module in sorted(timm.list_modules()):
        smallest: dict[str, tuple[float, str]] = {}
        for name in timm.list_models(module=module):
            try:
                with torch.device("meta"):
                    model = timm.create_model(name, pretrained=False)
                size = float(sum(p.numel() for p in model.parameters()))
                cls = type(model).__name__
            except Exception:  # a model timm cannot build on meta: ranked last
                size, cls = float("inf"), "?"
            if cls not in smallest or size < smallest[cls][0]:
                smallest[cls] = (size, name)
        for _, name in sorted(smallest.values()):
            chosen.append((name, f"module {module}", {}, None))
    return chosen + flavours()


def flavours() -> list[tuple[str, str, dict[str, Any], tuple[int, int] | None]]:
    """Every row of the families table (tiny instances) and the models of issue 12."""
    from pytest_vitattn.extract.catalog import FAMILIES

    chosen = [
        (case.model, f"flavour {case.family}", dict(case.kwargs), case.input_hw)
        for case in FAMILIES
    ]
    for name, kwargs, input_hw in EXTRAS:
        size = f" {input_hw[0]}x{input_hw[1]}" if input_hw else ""
        extra = f" {', '.join(f'{k}={v}' for k, v in kwargs.items())}" if kwargs else ""
        chosen.append((name, f"issue 12{extra}{size}", kwargs, input_hw))
    return chosen


def classify(
    name: str, kwargs: dict[str, Any] | None = None, input_hw: tuple[int, int] | None = None
) -> tuple[str, str, str]:
    """(status, detail, class name) of one model, created with random weights."""
    import timm
    from family_reference import reference_rows

    from pytest_vitattn.errors import ImageError, UnsupportedModelError
    from pytest_vitattn.extract import describe, extract_cls_attention

    try:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **(kwargs or {})).eval()
    except Exception as error:  # timm cannot build it: not ours
        return "skipped", f"timm cannot create it: {type(error).__name__}: {_line(error)}", "?"
    cls = type(model).__name__
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.normal_(0.0, 0.5)  # zero-initialised biases and tokens show up
    try:
        anatomy = describe(model)
        query = anatomy.query_index
        if query is None:  # registers, no CLS: read the last register row
            query = anatomy.num_prefix_tokens - 1
        height, width = input_hw or tuple(model.pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
        fast = extract_cls_attention(
            model, pixels, method="fast", query_index=query, rollout_fusion=None, anatomy=anatomy
        )
        try:
            fx = extract_cls_attention(
                model, pixels, method="fx", query_index=query, rollout_fusion=None, anatomy=anatomy
            )
        except UnsupportedModelError as error:
            if "cannot be traced by torch.fx" not in str(error):
                raise
            fx = None
        reference = reference_rows(model, pixels, query, anatomy)
    except (UnsupportedModelError, ImageError) as error:
        return "refused", _line(error), cls
    except Exception as error:  # the census reports it
        where = traceback.extract_tb(error.__traceback__)[-1]
        return (
            "crash",
            f"{type(error).__name__}: {_line(error)} ({where.filename}:{where.lineno})",
            cls,
        )
    differences = [_max_diff(fast.rows, reference)]
    if fx is not None:
        differences.append(_max_diff(fx.rows, reference))
    worst = max(differences)
    layout = fast.layout
    paths = "fast + fx" if fx is not None else "fast (fx cannot trace it)"
    if layout.ragged:  # a grid and head count per layer: each distinct one, in order
        heads = "/".join(_distinct(str(rows.shape[1]) for rows in fast.rows))
        grids = "/".join(_distinct(f"{h}x{w}" for h, w in layout.layer_grids))
        shape = f"{len(fast.rows)} layers x {heads} heads"
    else:
        shape = f"{fast.rows.shape[1]} layers x {fast.rows.shape[2]} heads"
        grids = f"{layout.grid[0]}x{layout.grid[1]}"
    detail = (
        f"{anatomy.family}: {shape}, {layout.num_prefix_tokens} prefix + {grids}; {paths}; "
        f"max diff {worst:.1e}"
    )
    return ("verified" if worst <= TOLERANCE else "WRONG"), detail, cls


def _max_diff(rows: Any, reference: Any) -> float:
    """The largest difference between extracted and reference rows (a tensor, or a list of
    per-layer tensors for models with a grid per layer, whose shapes must match)."""
    if isinstance(rows, list) or isinstance(reference, list):
        if not isinstance(rows, list) or not isinstance(reference, list):
            return float("inf")
        if len(rows) != len(reference):
            return float("inf")
        return max(_max_diff(got, expected) for got, expected in zip(rows, reference, strict=True))
    if rows.shape != reference.shape:
        return float("inf")
    return (rows - reference).abs().max().item()


def _distinct(values: Any) -> list[str]:
    """``values`` without consecutive repeats."""
    out: list[str] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


def _line(error: BaseException) -> str:
    """The first line of the message, without the list of what works (said once, in README)."""
    from pytest_vitattn.extract.refusals import WHAT_WORKS

    text = str(error).replace(WHAT_WORKS, "").strip().splitlines()
    return (text[0] if text else type(error).__name__)[:400].replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="census only these model names")
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON")
    parser.add_argument(
        "--selection",
        type=Path,
        help="JSON file of the selected models: read if it exists, else written (the walk "
        "over the registry takes minutes)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import timm

    if args.only:
        chosen = [(name, "command line", {}, None) for name in args.only]
    elif args.selection and args.selection.exists():
        chosen = [
            (name, source, kwargs, tuple(hw) if hw else None)
            for name, source, kwargs, hw in json.loads(args.selection.read_text())
        ]
    else:
        chosen = selection()
        if args.selection:
            args.selection.write_text(json.dumps(chosen, indent=1))
    print(f"# census of timm {timm.__version__}, torch {torch.__version__}: {len(chosen)} models")
    outcomes = []
    for index, (name, source, kwargs, input_hw) in enumerate(chosen, 1):
        start = time.perf_counter()
        status, detail, cls = classify(name, kwargs, input_hw)
        outcome = Outcome(name, source, cls, status, detail, time.perf_counter() - start)
        outcomes.append(outcome)
        print(f"[{index}/{len(chosen)}] {status:8} {name} ({outcome.seconds:.1f} s): {detail}")
        sys.stdout.flush()
        if args.json:
            args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    print()
    print("counts: " + ", ".join(f"{status} {count}" for status, count in sorted(counts.items())))
    print()
    print("| model | source | class | status | detail |")
    print("|---|---|---|---|---|")
    for o in outcomes:
        print(f"| `{o.model}` | {o.source} | {o.cls} | {o.status} | {o.detail} |")
    return 1 if counts.get("WRONG") or counts.get("crash") else 0


if __name__ == "__main__":
    raise SystemExit(main())
