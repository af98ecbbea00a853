"""Baselines keyed by what was probed, through pytester with the shipped model.

The issue's regressions: baselines named by call order (``0001.png``, ``0001.png-2``), so two
images of one file name, or two arrays, swapped in order compared against each other (JS
1.000 "drift"); a test of two images needed three runs (one missing baseline written per
run); files written 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_vitattn import baseline
from pytest_vitattn.images import content_hash, load_image

DATA = Path(__file__).resolve().parents[1] / "example_suite" / "data"

TWO_OF_EACH = """
from pathlib import Path

import numpy as np
from PIL import Image

ARRAYS = [np.asarray(Image.open(Path("a") / "0001.png")), np.asarray(Image.open(Path("b") / "0001.png"))]
ORDER = {order}

def test_two_files_and_two_arrays(vitattn):
    paths = [Path("a") / "0001.png", Path("b") / "0001.png"]
    for index in ORDER:
        vitattn(paths[index]).matches_baseline()
        vitattn(ARRAYS[index]).matches_baseline()
"""


@pytest.fixture
def two_images(pytester, monkeypatch):
    """a/0001.png (a circle) and b/0001.png (a square): one file name, other pixels."""
    monkeypatch.delenv("CI", raising=False)
    for folder, source in (("a", "circle_1.png"), ("b", "square_1.png")):
        pytester.mkdir(folder)
        Image.open(DATA / source).save(pytester.path / folder / "0001.png")
    return pytester


def stored(pytester) -> list[str]:
    root = pytester.path / "vitattn_baselines"
    return sorted(path.name for path in root.rglob("*.safetensors"))


def key_of(path: Path, name: str | None) -> str:
    return baseline.image_key(name, content_hash(load_image(path)))


def test_every_missing_baseline_is_written_in_one_run_and_order_does_not_matter(two_images):
    pytester = two_images
    pytester.makepyfile(test_two=TWO_OF_EACH.format(order=[0, 1]))
    first = pytester.runpytest("-p", "no:cacheprovider")
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(
        [
            "no attention baseline yet for 4 images of this test; wrote all of them in this run:",
            "    vitattn_baselines/test_two/test_two_files_and_two_arrays/0001.png-*.safetensors",
        ]
    )
    circle, square = (pytester.path / "a" / "0001.png", pytester.path / "b" / "0001.png")
    expected = sorted(
        key + ".safetensors"
        for key in (
            key_of(circle, "0001.png"),
            key_of(square, "0001.png"),
            key_of(circle, None),
            key_of(square, None),
        )
    )
    assert len(set(expected)) == 4 and stored(pytester) == expected
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)

    pytester.makepyfile(test_two=TWO_OF_EACH.format(order=[1, 0]))  # swapped
    swapped = pytester.runpytest("-p", "no:cacheprovider")
    swapped.assert_outcomes(passed=1)
    assert stored(pytester) == expected


def test_in_ci_every_missing_baseline_is_listed_once(two_images, monkeypatch):
    pytester = two_images
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(test_two=TWO_OF_EACH.format(order=[0, 1, 0]))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "no attention baseline at ",
            "    vitattn_baselines/test_two/test_two_files_and_two_arrays/0001.png-*",
            "    vitattn_baselines/test_two/test_two_files_and_two_arrays/image-*",
            "    vitattn_baselines/test_two/test_two_files_and_two_arrays/0001.png-*",
            "    vitattn_baselines/test_two/test_two_files_and_two_arrays/image-*",
            "  and missing baselines fail here (the CI environment variable is set).",
        ]
    )
    assert not (pytester.path / "vitattn_baselines").exists()


ONE = """
def test_one(vitattn):
    vitattn("a/0001.png").matches_baseline()
"""


def test_a_baseline_of_other_pixels_is_an_error_not_a_drift(two_images):
    pytester = two_images
    pytester.makepyfile(test_one=ONE)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # written
    folder = pytester.path / "vitattn_baselines" / "test_one" / "test_one"
    (written,) = folder.glob("*.safetensors")
    # The baseline of b/0001.png (a square) put under a/0001.png's name.
    Image.open(pytester.path / "b" / "0001.png").save(pytester.path / "a" / "0001.png")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)  # writes b's
    (other,) = (path for path in folder.glob("*.safetensors") if path != written)
    Image.open(DATA / "circle_1.png").save(pytester.path / "a" / "0001.png")
    written.write_bytes(other.read_bytes())
    other.unlink()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"E *BaselineError: baseline vitattn_baselines/test_one/test_one/{written.name} was "
            "made from another image: its pixels' SHA-256 is *, this image's (0001.png) is *; "
            "comparing their attention would report a drift that is only a different picture.*"
        ]
    )
    assert "drifted" not in result.stdout.str()


def test_a_changed_image_names_the_old_baseline(two_images):
    pytester = two_images
    pytester.makepyfile(test_one=ONE)
    pytester.runpytest("-p", "no:cacheprovider", "--vitattn-missing-baselines=write")
    (old,) = (pytester.path / "vitattn_baselines").rglob("*.safetensors")
    Image.open(DATA / "square_1.png").save(pytester.path / "a" / "0001.png")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "no attention baseline for this test and image yet; wrote *",
            "  (this test's folder has a baseline for the same file name made from other "
            f"pixels or by pytest-vitattn 0.1: *{old.name}; delete it if the image changed)",
        ]
    )


def test_baseline_files_are_readable_like_other_repository_files(two_images):
    pytester = two_images
    pytester.makepyfile(test_one=ONE)
    previous = os.umask(0o022)
    try:
        pytester.runpytest("-p", "no:cacheprovider", "--vitattn-missing-baselines=write")
    finally:
        os.umask(previous)
    (path,) = (pytester.path / "vitattn_baselines").rglob("*.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_write_follows_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        baseline.write(tmp_path / "x.safetensors", b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.safetensors").stat().st_mode) == mode
    assert [path.name for path in tmp_path.iterdir()] == ["x.safetensors"]


def test_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o640)
    baseline.write(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_content_hash_is_of_the_pixels_in_every_form(tmp_path):
    image = Image.open(DATA / "circle_1.png").convert("RGB")
    pixels = np.asarray(image)
    expected = content_hash(load_image(DATA / "circle_1.png"))
    import hashlib

    import torch

    independent = hashlib.sha256(
        b"rgb8:" + repr(pixels.shape).encode() + b":" + pixels.tobytes()
    ).hexdigest()
    assert expected == independent
    from PIL.PngImagePlugin import PngInfo

    metadata = PngInfo()
    metadata.add_text("Software", "another editor")
    image.save(tmp_path / "resaved.png", pnginfo=metadata, compress_level=1)  # other bytes
    assert (tmp_path / "resaved.png").read_bytes() != (DATA / "circle_1.png").read_bytes()
    assert content_hash(load_image(tmp_path / "resaved.png")) == expected
    image.save(tmp_path / "same.jpg", quality=100)  # other bytes, other pixels
    tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    for form in (image, pixels, tensor, tensor.float() / 255):
        assert content_hash(load_image(form)) == expected
    assert content_hash(load_image(tmp_path / "same.jpg")) != expected
