"""Render the report page from its view model with Jinja2 (templates in ``templates/``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

from pytest_vitattn.errors import VitAttnError
from pytest_vitattn.report.views import ReportView

PAGE_TEMPLATE = "report.html"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def template_dirs() -> list[Path]:
    """Where templates are looked for: in the installed package (wheel), then at the
    repository's top level (editable install), whichever exist."""
    candidates = (_PACKAGE_DIR / "templates", _PACKAGE_DIR.parent / "templates")
    return [path for path in candidates if (path / PAGE_TEMPLATE).is_file()]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja2 environment; autoescaping is on for .html templates (the CSS and JS
    includes are our own static files)."""
    directories = template_dirs()
    if not directories:
        raise VitAttnError(
            f"the report templates are missing: no {PAGE_TEMPLATE} in {_PACKAGE_DIR / 'templates'} "
            f"or {_PACKAGE_DIR.parent / 'templates'}; reinstall pytest-vitattn"
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(path) for path in directories]),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_page(view: ReportView) -> str:
    """The whole report as one self-contained HTML document."""
    return environment().get_template(PAGE_TEMPLATE).render(view=view)
