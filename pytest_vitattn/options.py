"""The plugin's settings: one table that defines CLI options, ini keys and marker arguments.

Values are checked where they are parsed (``argparse`` types for the CLI, the same parsers
for ini values and marker arguments), so a wrong value fails with one clear sentence.
Precedence: marker > command line > ini file > default. No torch or timm here.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_vitattn.tolerance import DEFAULT_MAX_JS, Tolerance, parse_tolerance

DEFAULT_MODEL = "vitattn_tiny_shapes"
DEFAULT_REPORT = "vitattn-report/report.html"

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# timm's own hub prefix: hf-hub:<org>/<repo>[@revision] (not transformers' models).
_HF_HUB_NAME = re.compile(r"^hf[-_]hub:[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+(@[A-Za-z0-9_.\-]+)?$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# Arguments the plugin itself passes to timm.create_model: set them through weights=.
_RESERVED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    parse.__name__ = "choice"
    return parse


def parse_model(value: str) -> str:
    value = value.strip()
    if value.startswith("hf:"):  # transformers: hf:<repo id> or hf:<save_pretrained dir>
        if len(value) == 3:
            raise argparse.ArgumentTypeError(
                "'hf:' needs a repo id or a directory, e.g. hf:facebook/dinov2-small"
            )
        return value
    if not (_MODEL_NAME.match(value) or _HF_HUB_NAME.match(value)):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a timm model name (letters, digits, '_', '.', '-') "
            "or a timm hub name (hf-hub:org/repo)"
        )
    return value


def parse_weights(value: str) -> str:
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("weights must be 'pretrained', 'random' or a file path")
    return value


def parse_device(value: str) -> str:
    value = value.strip().lower()
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (cpu, cuda, cuda:N, mps)")
    return value


def parse_rollout(value: str) -> str | None:
    value = value.strip().lower()
    if value == "none":
        return None
    return _choice("mean", "max", "min")(value)


def parse_discard_ratio(value: str | float) -> float:
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number in [0, 1)") from None
    if not 0.0 <= ratio < 1.0:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not in [0, 1): it is the share of each layer's fused attention "
            "entries set to zero before rollout (vit-explain uses 0.9)"
        )
    return ratio


def parse_token(value: str | int) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("cls", "dist"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a query token: use 'cls', 'dist' or a prefix-token index"
    )


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def parse_branch(value: str | int) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "primary":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a branch: use 'primary' or a branch index (CrossViT: 0 or 1)"
    )


QUERY_SOURCES = ("auto", "cls", "pool")


def parse_query_source(value: str) -> str:
    text = str(value).strip().lower()
    if text in QUERY_SOURCES:
        return text
    raise argparse.ArgumentTypeError(f"{value!r} is not a query source: use auto, cls or pool")


def parse_directory(value: str) -> str:
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("the baseline directory must be a non-empty path")
    return value


def parse_model_kwargs(value: str | Mapping[str, Any]) -> tuple[tuple[str, Any], ...] | None:
    """``"num_classes=5,img_size=384"`` (or a dict) as sorted, hashable (key, value) pairs.

    Values are Python literals (``5``, ``0.1``, ``True``, ``None``, ``(384, 384)``); anything
    else is a string (``global_pool=token``). ``""`` or ``"none"`` means no keyword arguments.
    """
    if isinstance(value, Mapping):
        items = [(str(key), _frozen(item)) for key, item in value.items()]
    else:
        text = str(value).strip()
        if text.lower() in ("", "none"):
            return None
        items = [_kwarg_item(part) for part in _split_top_level(text)]
    keys = [key for key, _ in items]
    for key in keys:
        if not key.isidentifier():
            raise argparse.ArgumentTypeError(f"{key!r} is not a keyword argument name")
        if key in _RESERVED_KWARGS:
            raise argparse.ArgumentTypeError(
                f"{key!r} is set by the plugin; choose weights with weights=pretrained|random|PATH"
            )
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"model kwarg(s) given twice: {', '.join(repeated)}")
    return tuple(sorted(items)) or None


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def _kwarg_item(part: str) -> tuple[str, Any]:
    key, sep, raw = part.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise argparse.ArgumentTypeError(
            f"{part!r} is not KEY=VALUE (e.g. num_classes=5,img_size=384)"
        )
    raw = raw.strip()
    word = {"true": True, "false": False, "none": None}.get(raw.lower(), raw)
    if word is not raw:
        return key.strip(), word
    try:
        literal = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        literal = raw  # a bare word such as global_pool=token
    return key.strip(), _frozen(literal)


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise argparse.ArgumentTypeError(
        f"model kwarg value {value!r} is a {type(value).__name__}; use numbers, strings, "
        "booleans, None or tuples of them"
    )


def parse_factory(value: str) -> str | None:
    """``"package.module:function"``: a callable that returns your own ``nn.Module``."""
    value = str(value).strip()
    if value.lower() in ("", "none"):
        return None
    if not _FACTORY.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not 'package.module:function' (the function returns your nn.Module)"
        )
    return value


def parse_threads(value: str | int) -> int | None:
    """``auto`` (None: cores / xdist workers, or OMP_NUM_THREADS) or a thread count >= 1."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"{value!r} is not 'auto' or a thread count >= 1")


@dataclass(frozen=True)
class Setting:
    """One setting, available as ``--vitattn-<flag>``, ini ``vitattn_<key>`` and/or marker.

    Attributes:
        key: the name in the marker and in ``Settings``; ini key is ``vitattn_<key>``.
        parse: turns a string (or marker value) into the value; raises ArgumentTypeError.
        default: used when nothing sets it.
        metavar: shown in ``pytest --help``.
        help: one sentence.
        in_marker: whether ``@pytest.mark.vitattn(key=...)`` may set it.
        is_path: relative values are resolved against where they were written.
    """

    key: str
    parse: Callable[[Any], Any]
    default: Any
    metavar: str
    help: str
    in_marker: bool = True
    is_path: bool = False

    @property
    def flag(self) -> str:
        return "--vitattn-" + self.key.replace("_", "-")

    @property
    def ini(self) -> str:
        return "vitattn_" + self.key


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        parse_model,
        DEFAULT_MODEL,
        "NAME",
        "timm model name to probe, or hf:REPO_OR_DIR for a transformers model; default: "
        "the shipped vitattn_tiny_shapes.",
    ),
    Setting(
        "weights",
        parse_weights,
        "pretrained",
        "pretrained|random|PATH",
        "'pretrained' (timm hub, or the shipped file), 'random' init, or a local "
        "safetensors/torch weights file.",
        is_path=True,
    ),
    Setting(
        "device",
        parse_device,
        "cpu",
        "DEVICE",
        "where the model runs: cpu (default), cuda, cuda:N or mps.",
        in_marker=False,
    ),
    Setting(
        "preprocess",
        _choice("resize", "center-crop"),
        "resize",
        "resize|center-crop",
        "resize the whole image to the input size (as the reference notebook) or use "
        "timm's resize + center crop; masks follow the same geometry.",
    ),
    Setting(
        "extraction",
        _choice("auto", "fast", "fx"),
        "auto",
        "auto|fast|fx",
        "how attention is read: fast (fused forward, CLS rows from q and k), fx (the "
        "notebook's torch.fx full matrices), or auto.",
    ),
    Setting(
        "rollout",
        parse_rollout,
        "mean",
        "mean|max|min|none",
        "head fusion for attention rollout, or none to skip it (it costs a full "
        "attention matrix per layer).",
    ),
    Setting(
        "rollout_discard_ratio",
        parse_discard_ratio,
        "0",
        "RATIO",
        "rollout: share of each layer's fused attention entries zeroed (lowest first, "
        "never token 0 -> token 0) before it is folded in, as vit-explain's discard_ratio.",
    ),
    Setting(
        "token",
        parse_token,
        "cls",
        "cls|dist|INDEX",
        "which prefix token's attention row to read (DeiT-distilled: 'dist').",
    ),
    Setting(
        "branch",
        parse_branch,
        "primary",
        "primary|INDEX",
        "multi-branch models (CrossViT): whose CLS attention to read; primary (the branch "
        "with the most self-attention blocks, timm's branch 1) or an index.",
    ),
    Setting(
        "query_source",
        parse_query_source,
        "auto",
        "auto|cls|pool",
        "models with a CLS token and an attention-pooling query (PE-core): which to read; "
        "auto (the CLS token if there is one, else the pooling query), cls or pool.",
    ),
    Setting(
        "tolerance",
        parse_tolerance,
        str(DEFAULT_MAX_JS),
        "JS|BOUNDS",
        "how far maps may drift from their baseline: the largest Jensen-Shannon divergence "
        "per map, or bounds like 'max_js=0.05,min_correlation=0.9'.",
    ),
    Setting(
        "baseline_dir",
        parse_directory,
        None,
        "DIR",
        "where attention baselines are kept; default: vitattn_baselines/ beside each test file.",
        is_path=True,
    ),
    Setting(
        "missing_baselines",
        _choice("auto", "write", "fail"),
        "auto",
        "auto|write|fail",
        "a test without a baseline: write it and pass (write), fail (fail), or auto: "
        "fail, and outside CI (no CI environment variable) also write it.",
        in_marker=False,
    ),
    Setting(
        "baseline_model",
        _choice("require-same", "compare"),
        "require-same",
        "require-same|compare",
        "a baseline made with another model or weights: fail, showing the drift "
        "(require-same), or pass when the maps are within tolerance (compare).",
    ),
    Setting(
        "strict_masks",
        parse_bool,
        "false",
        "true|false",
        "a mask check that passes although its mask covers more than half of the image "
        "(inverted?) or its value is below chance: warn (false) or fail (true).",
    ),
    Setting(
        "model_kwargs",
        parse_model_kwargs,
        None,
        "KEY=VALUE,...",
        "keyword arguments for timm.create_model, e.g. 'num_classes=5,img_size=384'; "
        "num_classes defaults to the weights file's head.",
    ),
    Setting(
        "model_factory",
        parse_factory,
        None,
        "MODULE:FUNCTION",
        "a function that returns your own nn.Module (called with model_kwargs), probed "
        "instead of a timm model by name.",
    ),
    Setting(
        "strict_weights",
        parse_bool,
        "false",
        "true|false",
        "make it an error (not a warning) when timm resamples a checkpoint's position "
        "embeddings to fit the model.",
    ),
    Setting(
        "threads",
        parse_threads,
        "auto",
        "auto|N",
        "torch threads during probes (restored after): auto is the idle cores / xdist "
        "workers (at least 1), or OMP_NUM_THREADS when set.",
        in_marker=False,
    ),
)

SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}


def register(parser: Any) -> None:
    """Add the options and ini keys to pytest's parser."""
    group = parser.getgroup("vitattn", "Vision Transformer attention (pytest-vitattn)")
    for setting in SETTINGS:
        group.addoption(
            setting.flag,
            dest=f"vitattn_{setting.key}",
            type=setting.parse,
            default=None,
            metavar=setting.metavar,
            help=f"{setting.help} Ini: {setting.ini}.",
        )
        parser.addini(setting.ini, help=setting.help, type="string", default="")
    group.addoption(
        "--vitattn-report",
        dest="vitattn_report",
        nargs="?",
        const=DEFAULT_REPORT,
        default=None,
        metavar="PATH",
        help=f"write the HTML attention report (and results.json beside it); "
        f"default path {DEFAULT_REPORT}.",
    )
    group.addoption(
        "--vitattn-update-baselines",
        dest="vitattn_update_baselines",
        action="store_true",
        default=False,
        help="write the attention baseline of every checked map, replacing what is there.",
    )


def marker_help() -> str:
    keys = ", ".join(f"{s.key}=..." for s in SETTINGS if s.in_marker)
    return f"vitattn({keys}): pytest-vitattn settings for this test (override CLI and ini)."


def parse_marker_value(key: str, value: Any) -> Any:
    """Check one ``@pytest.mark.vitattn`` argument; raises ValueError with the fix."""
    setting = SETTINGS_BY_KEY.get(key)
    if setting is None or not setting.in_marker:
        allowed = ", ".join(s.key for s in SETTINGS if s.in_marker)
        raise ValueError(f"@pytest.mark.vitattn got unknown argument {key!r}; allowed: {allowed}")
    if value is None and key == "rollout":
        return None
    try:
        # Numbers, and a tolerance given as a dict or Tolerance, keep their type.
        keep = isinstance(value, (int, float, Mapping, Tolerance))
        return setting.parse(value if keep else str(value))
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"@pytest.mark.vitattn({key}=...): {error}") from None


def settings_table() -> str:
    """The README's table of settings (what, marker, command line, ini key, default), Markdown."""
    rows = []
    for setting in SETTINGS:
        marker = f"`{setting.key}=`" if setting.in_marker else "-"
        default = f"`{setting.default}`" if isinstance(setting.default, str) else "(see text)"
        option = f"`{setting.flag}={setting.metavar}`".replace("|", "\\|")
        what = setting.help.replace("|", "\\|")
        rows.append(f"| {what} | {marker} | {option} | `{setting.ini}` | {default} |")
    return "\n".join(rows)
