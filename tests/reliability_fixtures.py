"""Fixtures shared by tests/test_reliability*.py.

Import ``logs_fixture`` / ``mmdet_scope_fixture`` into a test module; tests use them as
``logs`` / ``mmdet_scope`` (autouse).
"""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True, name='mmdet_scope')
def mmdet_scope_fixture():
    """Build from mmdet's registries even if an earlier test made a Runner with another
    default scope (mmengine's Runner defaults to 'mmengine')."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(name='logs')
def logs_fixture():
    """Records logged through mmengine's current logger during the test."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def log_text(records: list[logging.LogRecord]) -> str:
    """All messages of ``records``, one per line."""
    return '\n'.join(r.getMessage() for r in records)
