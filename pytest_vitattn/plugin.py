"""The pytest plugin: options, the ``vitattn`` marker and fixtures, and thin hooks.

Every hook hands off to the run's ``VitattnSession``. This module imports neither torch
nor timm, so installing the plugin costs nothing in test runs that don't use it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_vitattn import options
from pytest_vitattn.errors import VitAttnError
from pytest_vitattn.session import VitattnSession

SESSION_KEY = pytest.StashKey[VitattnSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", options.marker_help())
    session = VitattnSession(config)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(_RunHooks(session), "vitattn-run")
    if config.pluginmanager.hasplugin("html"):
        config.pluginmanager.register(_HtmlHooks(session), "vitattn-html")


class _RunHooks:
    """Hooks that need the run's session; registered once the session exists."""

    def __init__(self, session: VitattnSession) -> None:
        self.session = session

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        # Every phase: records made in setup or teardown, and their errors, are kept too.
        self.session.attach_records(item, report)
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        result = yield
        # Missing baselines were recorded (and written) as the test went; fail it once.
        message = self.session.missing_baselines_message(item)
        if message:
            pytest.fail(message, pytrace=False)
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, Any, Any]:
        # Shared probes (vitattn_probe) record into the test that is running.
        self.session.current_item = item
        try:
            return (yield)
        finally:
            self.session.current_item = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # In the xdist controller this sees the workers' reports: each record arrives once.
        self.session.collect(report)

    def pytest_sessionfinish(self, exitstatus: int) -> None:
        # Also runs after Ctrl-C and failures, so what was recorded is written.
        self.session.write_report(exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.session.report_lines():
            terminalreporter.write_line(line)


class _HtmlHooks:
    """Adds each test's heatmap grids to its row of a pytest-html report."""

    def __init__(self, session: VitattnSession) -> None:
        self.session = session

    # tryfirst makes this wrapper the outer one: _RunHooks has attached the records.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        # Records travel on the teardown report (see VitattnSession.attach_records).
        if call.when == "teardown" and item.config.getoption("htmlpath", None):
            from pytest_vitattn.report.html_extras import attach_extras

            attach_extras(report, self.session.report_path, item.config)
        return report


@pytest.fixture
def vitattn_module() -> Any:
    """Your own ``nn.Module`` to probe: override this fixture in a conftest.py (any scope).

    The default, None, means the model comes from the settings (``model=``, ``weights=``,
    ``model_kwargs=``, ``model_factory=``).
    """
    return None


@pytest.fixture
def vitattn(request: pytest.FixtureRequest, vitattn_module: Any) -> Any:
    """Probe the test's model: ``attn = vitattn(image)`` returns its CLS attention.

    The model comes from ``@pytest.mark.vitattn(model=...)``, ``--vitattn-model``, the
    ``vitattn_model`` ini key, or the shipped default, and is loaded once per session;
    or from an overridden ``vitattn_module`` fixture. ``vitattn.using(model=...)`` probes
    another model in the same test.
    """
    try:
        return request.config.stash[SESSION_KEY].probe_for(request.node, vitattn_module)
    except VitAttnError as error:
        message = f"vitattn: {error}"
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def vitattn_probe(pytestconfig: pytest.Config) -> Any:
    """Probes for module- or session-scoped fixtures: ``probe = vitattn_probe(model=...)``.

    Takes the marker's keywords; CLI and ini settings apply, test markers do not. Records go
    to the test that is running when an image is probed.
    """
    session = pytestconfig.stash[SESSION_KEY]

    def make(**settings: Any) -> Any:
        __tracebackhide__ = True
        try:
            return session.shared_probe(**settings)
        except VitAttnError as error:
            raise error.with_traceback(None) from None

    return make


@pytest.fixture
def vitattn_model(request: pytest.FixtureRequest, vitattn_module: Any) -> Any:
    """The ``LoadedModel`` the ``vitattn`` fixture uses in this test (model, data config)."""
    session = request.config.stash[SESSION_KEY]
    try:
        settings = session.settings_for(request.node)
        return session.loaded_for(request.node, settings, vitattn_module)
    except VitAttnError as error:
        message = f"vitattn: {error}"
    pytest.fail(message, pytrace=False)


@pytest.fixture
def vitattn_settings(request: pytest.FixtureRequest) -> Any:
    """The settings that apply to this test (marker > CLI > ini > default), for inspection."""
    try:
        return request.config.stash[SESSION_KEY].settings_for(request.node)
    except VitAttnError as error:
        message = f"vitattn: {error}"
    pytest.fail(message, pytrace=False)
