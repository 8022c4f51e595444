"""Capabilities are declared once, as data, and everything reads them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lilqueue.adapters import adapter_class
from lilqueue.adapters.base import FEATURES, Capabilities, Support
from lilqueue.config import BUILTIN_ADAPTERS, load_settings
from lilqueue.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def built_in() -> list[tuple[str, Capabilities]]:
    found = []
    for name in BUILTIN_ADAPTERS:
        try:
            found.append((name, adapter_class(load_settings(backend=name, env={})).capabilities))
        except ConfigError:
            continue  # an adapter not built yet
    return found


def test_every_feature_is_declared_with_a_level() -> None:
    assert {"memory", "sqlite"} <= {name for name, _ in built_in()}
    for name, caps in built_in():
        for feature, support in caps.rows():
            assert isinstance(support, Support) and support.level in ("native", "emulated", "none"), (name, feature)
            if support.level == "emulated":
                assert support.how, f"{name}.{feature} is emulated: say how"


def test_the_spec_features_are_all_there() -> None:
    spec = {"priority", "delay", "ttr", "touch", "retry", "hold", "kick", "stats", "blocking_reserve"}
    assert spec <= set(FEATURES)


def test_support_is_falsy_only_for_none() -> None:
    assert Support("native") and Support("emulated", "x") and not Support("none")


def test_the_readme_table_is_generated_from_the_declarations() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/capability_table.py", "--check", "README.md"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alias", ["sqs", "amazonsqs"])
def test_sqs_aliases_share_one_class(alias: str) -> None:
    cls = adapter_class(load_settings(backend=alias, env={}))
    assert cls.__name__ == "SQSAdapter"
