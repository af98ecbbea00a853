"""Models as users have them: model kwargs, fine-tuned checkpoints, own modules, hub names."""

from __future__ import annotations

import argparse
import re
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from pytest_vitattn.errors import (
    ModelLoadError,
    UnsupportedModelError,
    VitattnWarning,
    WeightsError,
)
from pytest_vitattn.models import ModelSpec, adopt_module, load_model
from pytest_vitattn.options import parse_factory, parse_model, parse_model_kwargs

DEIT = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def finetuned_deit(tmp_path_factory):
    """A 5-class deit_tiny (random weights), saved as safetensors: what a fine-tune leaves."""
    torch.manual_seed(3)
    model = timm.create_model(DEIT, pretrained=False, num_classes=5)
    path = tmp_path_factory.mktemp("ckpt") / "deit_tiny_5cls.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.state_dict()


def test_model_kwargs_parse_numbers_words_tuples_and_dicts():
    assert parse_model_kwargs("num_classes=5,img_size=384") == (
        ("img_size", 384),
        ("num_classes", 5),
    )
    assert parse_model_kwargs("global_pool=token, drop_rate=0.1, class_token=true") == (
        ("class_token", True),
        ("drop_rate", 0.1),
        ("global_pool", "token"),
    )
    assert parse_model_kwargs("img_size=(384, 320),num_classes=5") == (
        ("img_size", (384, 320)),
        ("num_classes", 5),
    )
    assert parse_model_kwargs({"img_size": [96, 96]}) == (("img_size", (96, 96)),)
    assert parse_model_kwargs("none") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("num_classes", "'num_classes' is not KEY=VALUE"),
        ("num_classes=5,num_classes=6", "model kwarg(s) given twice: num_classes"),
        ("pretrained=true", "'pretrained' is set by the plugin"),
        ("1x=3", "'1x' is not a keyword argument name"),
    ],
)
def test_bad_model_kwargs_are_refused_with_the_fix(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse_model_kwargs(text)


def test_hub_names_and_factories_parse():
    assert parse_model("hf-hub:timm/vit_tiny_patch16_224.augreg_in21k") == (
        "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"
    )
    assert parse_factory("my_models.vit:build") == "my_models.vit:build"
    with pytest.raises(argparse.ArgumentTypeError, match=r"not 'package\.module:function'"):
        parse_factory("my_models.vit.build")
    with pytest.raises(argparse.ArgumentTypeError, match="not a timm model name"):
        parse_model("hf-hub:no-slash")


def test_a_finetuned_checkpoint_loads_with_num_classes_from_its_head(finetuned_deit):
    path, state = finetuned_deit
    loaded = load_model(ModelSpec(DEIT, str(path)))
    assert loaded.model.num_classes == 5
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key  # the head too: timm did not drop it
    assert loaded.notes == (
        f"{DEIT}: num_classes=5 taken from deit_tiny_5cls.safetensors (head.weight [5, 192]); "
        "the model's default is 1000",
    )


def test_a_torch_checkpoint_in_a_wrapper_dict_gives_its_head_too(tmp_path, finetuned_deit):
    _, state = finetuned_deit
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = load_model(ModelSpec(DEIT, str(path)))
    assert torch.equal(loaded.model.head.weight, state["head.weight"])


def test_a_num_classes_that_contradicts_the_checkpoint_is_refused(finetuned_deit):
    path, _ = finetuned_deit
    with pytest.raises(WeightsError) as info:
        load_model(ModelSpec(DEIT, str(path), kwargs=(("num_classes", 10),)))
    assert str(info.value) == (
        "num_classes=10 was given, but deit_tiny_5cls.safetensors's head.weight has shape "
        "[5, 192] (5 classes); leave num_classes out to use the checkpoint's head"
    )


def test_img_size_and_global_pool_reach_timm():
    loaded = load_model(
        ModelSpec(
            "vit_tiny_patch16_224",
            "random",
            kwargs=(("global_pool", "avg"), ("img_size", 112), ("num_classes", 7)),
        )
    )
    assert loaded.model.patch_embed.grid_size == (7, 7)
    assert loaded.model.global_pool == "avg"
    assert loaded.data_config["input_size"] == (3, 112, 112)
    assert loaded.describe()["kwargs"] == {"global_pool": "avg", "img_size": 112, "num_classes": 7}


def test_an_unknown_model_kwarg_names_the_model_and_the_kwarg():
    with pytest.raises(
        ModelLoadError,
        match=r"'vit_tiny_patch16_224' does not take these model kwargs \(colour='red'\)",
    ):
        load_model(ModelSpec("vit_tiny_patch16_224", "random", kwargs=(("colour", "red"),)))


@pytest.fixture(scope="module")
def vit_tiny_224_file(tmp_path_factory):
    torch.manual_seed(5)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "vit_tiny_224.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model.state_dict()


def test_resampled_position_embeddings_warn_with_what_timm_did(vit_tiny_224_file):
    path, state = vit_tiny_224_file
    with pytest.warns(VitattnWarning) as caught:
        loaded = load_model(ModelSpec("vit_tiny_patch16_384", str(path)))
    message = str(caught[0].message)
    assert (
        "vit_tiny_224.safetensors holds position embeddings for a 14x14 patch grid, "
        "vit_tiny_patch16_384 has 24x24: timm resampled them from 14x14 to 24x24"
    ) in message
    assert "(model_kwargs img_size=224 matches the file)" in message
    assert "strict_weights=true" in message
    assert tuple(loaded.model.pos_embed.shape) == (1, 1 + 24 * 24, 192)
    # the cls token's embedding is carried over unchanged; only the patch grid is resampled
    assert torch.equal(loaded.model.pos_embed[0, 0], state["pos_embed"][0, 0])


def test_resampled_position_embeddings_are_an_error_under_strict_weights(vit_tiny_224_file):
    path, _ = vit_tiny_224_file
    with pytest.raises(WeightsError, match="strict_weights is on, so this is an error"):
        load_model(ModelSpec("vit_tiny_patch16_384", str(path), strict=True))


def test_a_checkpoint_of_the_same_size_loads_without_a_warning(vit_tiny_224_file):
    path, _ = vit_tiny_224_file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(ModelSpec("vit_tiny_patch16_224", str(path), strict=True))


def _own_vit(**kwargs):
    from timm.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=2, **kwargs
    )


def test_an_own_module_without_a_data_config_is_refused():
    with pytest.raises(
        ModelLoadError, match="the module has no pretrained_cfg with input_size, mean and std"
    ):
        adopt_module(_own_vit(), ModelSpec("module:VisionTransformer"))


def test_an_own_module_that_is_not_a_vit_is_refused_with_the_reason():
    model = timm.create_model("resnet18", pretrained=False)
    with pytest.raises(UnsupportedModelError):
        adopt_module(model, ModelSpec("module:ResNet"))


def test_an_own_module_is_probed_like_a_timm_model():
    from pytest_vitattn.probe import Probe

    model = _own_vit(num_classes=4)
    model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    loaded = adopt_module(model, ModelSpec("module:VisionTransformer"))
    assert loaded.weights_id.startswith("module:") and len(loaded.weights_id) == 19
    assert loaded.describe()["weights"] == "as built"
    attn = Probe(loaded)(torch.rand(3, 64, 64))
    assert (attn.num_layers, attn.num_heads, attn.grid) == (2, 2, (8, 8))


FACTORY_MODULE = """
import torch
from timm.models import VisionTransformer

CALLS = []


def build(num_classes=3):
    CALLS.append(num_classes)
    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=2,
                              num_classes=num_classes)
    model.pretrained_cfg = {"input_size": (3, 64, 64), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return model


def bare():
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=2)
"""


def test_a_factory_setting_builds_the_module_once_with_model_kwargs(pytester):
    pytester.makepyfile(my_vits=FACTORY_MODULE)
    pytester.makeini("[pytest]\nvitattn_model_factory = my_vits:build\npythonpath = .\n")
    pytester.makepyfile(
        test_factory="""
        import torch
        import pytest
        import my_vits

        @pytest.mark.vitattn(model_kwargs={"num_classes": 6})
        def test_one(vitattn, vitattn_model):
            attn = vitattn(torch.rand(3, 64, 64))
            assert attn.grid == (8, 8)
            assert vitattn_model.model.num_classes == 6
            assert attn.record.model["name"] == "my_vits:build"

        @pytest.mark.vitattn(model_kwargs={"num_classes": 6})
        def test_two(vitattn):
            vitattn(torch.rand(3, 64, 64))
            assert my_vits.CALLS == [6]

        @pytest.mark.vitattn(model_factory="my_vits:bare")
        def test_bare(vitattn):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*vitattn: my_vits:bare: the module has no pretrained_cfg with input_size, mean and std*"]
    )


def test_a_factory_that_cannot_be_imported_says_so(pytester):
    pytester.makepyfile(
        test_factory="""
        import pytest

        @pytest.mark.vitattn(model_factory="not_there.models:build")
        def test_one(vitattn):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*model_factory 'not_there.models:build': cannot import 'not_there.models'*"]
    )


def test_the_vitattn_module_fixture_overridden_in_conftest_is_checked_once(pytester):
    pytester.makepyfile(my_vits=FACTORY_MODULE)
    pytester.makeini("[pytest]\npythonpath = .\n")
    pytester.makeconftest(
        """
        import pytest
        import my_vits

        @pytest.fixture(scope="session")
        def vitattn_module():
            return my_vits.build(num_classes=2)
        """
    )
    pytester.makepyfile(
        test_own="""
        import torch
        import pytest

        SEEN = []

        @pytest.mark.parametrize("seed", [0, 1])
        def test_probe(vitattn, vitattn_model, vitattn_module, seed):
            torch.manual_seed(seed)
            attn = vitattn(torch.rand(3, 64, 64))
            assert vitattn_model.model is vitattn_module
            assert attn.record.model["name"] == "module:VisionTransformer"
            SEEN.append(vitattn_model)
            assert all(loaded is SEEN[0] for loaded in SEEN)

        @pytest.mark.vitattn(model="deit_tiny_patch16_224")
        def test_ambiguous(vitattn):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*the vitattn_module fixture gives this test its model, and its marker sets model too*"]
    )


def test_a_finetuned_checkpoint_through_the_fixture(pytester, finetuned_deit):
    path, _ = finetuned_deit
    pytester.makepyfile(
        test_finetuned=f"""
        import torch
        import pytest

        @pytest.mark.vitattn(model="deit_tiny_patch16_224", weights={str(path)!r})
        def test_it(vitattn, vitattn_model):
            attn = vitattn(torch.rand(3, 224, 224))
            assert vitattn_model.model.num_classes == 5
            assert attn.record.prediction["index"] < 5
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["vitattn: deit_tiny_patch16_224: num_classes=5 taken from deit_tiny_5cls.safetensors*"]
    )


def test_model_kwargs_on_the_command_line_are_checked_at_parse_time(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest("--vitattn-model-kwargs=num_classes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*'num_classes' is not KEY=VALUE (e.g. num_classes=5,img_size=384)*"]
    )


def test_model_kwargs_from_the_command_line_and_ini_reach_the_model(pytester):
    pytester.makeini("[pytest]\nvitattn_model_kwargs = img_size=96,num_classes=3\n")
    pytester.makepyfile(
        test_kwargs="""
        import torch
        import pytest

        @pytest.mark.vitattn(model="vit_tiny_patch16_224", weights="random")
        def test_ini(vitattn, vitattn_settings):
            assert vitattn_settings.model_kwargs == (("img_size", 96), ("num_classes", 3))
            assert vitattn(torch.rand(3, 96, 96)).grid == (6, 6)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:cacheprovider", "--vitattn-model-kwargs=img_size=64")
    result.assert_outcomes(failed=1)
    # the command line replaces the ini value as a whole (marker > CLI > ini)
    result.stdout.fnmatch_lines(["*AssertionError: assert (('img_size', 64),) == *"])
