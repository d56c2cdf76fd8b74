"""The RPC modules presenced serves, each a table of procedures in a file of its own.

A new module is one new file here plus one line in `SERVED_MODULES`.
"""

from presenced.services import presence, social_v2
from presenced.services.base import Module

SERVED_MODULES: tuple[Module, ...] = (
    presence.MODULE,
    social_v2.MODULE,
)

__all__ = ["SERVED_MODULES"]
