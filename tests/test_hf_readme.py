"""The README's transformers families table is the catalog's (no transformers needed)."""

from __future__ import annotations

from pathlib import Path

from pytest_vitattn.extract.catalog import hf_markdown_table
from pytest_vitattn.options import parse_model

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_hf_families_table_is_the_catalog():
    start = README.index("<!-- hf-families-table")
    start = README.index("\n", start) + 1
    end = README.index("<!-- end hf-families-table -->")
    assert README[start:end].strip() == hf_markdown_table(), (
        "README hf families table is stale: python -m pytest_vitattn.extract.catalog"
    )


def test_hf_names_pass_the_model_option_and_timm_names_are_unchanged():
    assert parse_model(" hf:facebook/dinov2-small ") == "hf:facebook/dinov2-small"
    assert parse_model("hf:./models/my vit") == "hf:./models/my vit"
    assert parse_model("deit_tiny_patch16_224") == "deit_tiny_patch16_224"
