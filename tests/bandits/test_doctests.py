"""The examples in the estimators' and reward models' docstrings run and hold."""
from __future__ import annotations

import doctest

import pytest

import bandits.estimators
import bandits.reward_models


@pytest.mark.parametrize("module", [bandits.estimators, bandits.reward_models])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
