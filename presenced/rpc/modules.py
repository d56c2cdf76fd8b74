"""Declarations of the RPC modules a server offers: names and procedure kinds only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ModuleSpec", "ProcedureSpec", "module_registry"]


@dataclass(frozen=True, slots=True)
class ProcedureSpec:
    """One procedure; ``name`` is the proto rpc name exactly, since clients look it up by name."""

    name: str
    server_streaming: bool = False


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """A service. Procedures get ids in listed order when a port loads the module."""

    name: str
    procedures: Sequence[ProcedureSpec]

    def __post_init__(self) -> None:
        procedures = tuple(self.procedures)
        names = [p.name for p in procedures]
        if len(set(names)) != len(names):
            # Clients resolve ids by name, so a second entry could never be called.
            raise ValueError(f"module {self.name}: duplicate procedure names")
        object.__setattr__(self, "procedures", procedures)


def module_registry(*modules: ModuleSpec) -> dict[str, ModuleSpec]:
    """Registry keyed by module name, as ``RpcServerConnection`` expects."""
    registry: dict[str, ModuleSpec] = {}
    for module in modules:
        if module.name in registry:
            raise ValueError(f"module {module.name} declared twice")
        registry[module.name] = module
    return registry
