"""Fixtures of the deployment tests: each chart variant rendered once per test module."""

from __future__ import annotations

import pytest

from tests.deploy.chart_render import VARIANTS, Rendered, render, variant_values


@pytest.fixture(scope="module", params=VARIANTS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    result = render(variant_values(request.param))
    result.variant = request.param
    return result
