"""Helpers for the exception groups that trio's nurseries raise."""

from __future__ import annotations


def leaf_exceptions(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions inside a (possibly nested) group."""
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(leaf_exceptions(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
