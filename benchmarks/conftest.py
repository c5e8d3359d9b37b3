"""Prints each benchmark's own figure (G MAC/s, GB/s) after pytest-benchmark's tables, which
show times only: a kernel tuner reads throughput, and computing it by hand from a 'Min' column
in microseconds is where mistakes happen."""

from __future__ import annotations

from collections.abc import Callable

import pytest

FIGURES = pytest.StashKey[list[tuple[str, str]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Call with the figure's text; it is printed beside the test's id at the end of the run."""
    def record(text: str) -> None:
        request.config.stash[FIGURES].append((request.node.name, text))

    return record


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        from tritlm import _core

        terminalreporter.section(f"throughput, best call ({_core.active_isa()}, {_core.get_num_threads()} threads)")
        width = max(len(name) for name, _ in figures)
        for name, text in figures:
            terminalreporter.write_line(f"{name:<{width}}  {text}")
