"""Frameworks and controls read from the catalog data files, with the older ids as aliases."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from servers.compliance.domain import Framework, Severity
from servers.mesh.errors import InvalidArgument, NotFound

FILES = ("soc2.json", "iso27001.json", "gdpr.json", "pci_dss.json")


@dataclass(frozen=True)
class Control:
    """One control of a framework."""

    control_id: str
    """Framework prefix and reference, e.g. `SOC2-CC6.1`."""
    framework: Framework
    reference: str
    """The framework's own reference, e.g. `CC6.1`."""
    family: str
    title: str
    description: str
    severity: Severity
    automated: bool
    checks: tuple[str, ...]
    """Names of the checks it rests on (one check feeds many controls)."""
    remediation: str
    """Guidance for fixing a failure."""


@dataclass(frozen=True)
class FrameworkEntry:
    """A framework with its controls."""

    framework: Framework
    name: str
    version: str
    catalog_version: int
    description: str
    controls: tuple[Control, ...]
    aliases: dict[str, str]
    """Older control ids (full, e.g. `ISO27001-A.9.1.2`) and the control id they resolve to."""

    @property
    def families(self) -> list[str]:
        """Families in catalog order."""
        return list(dict.fromkeys(c.family for c in self.controls))


class Catalog:
    """Every framework's controls, by control id."""

    def __init__(self, frameworks: Iterable[FrameworkEntry]) -> None:
        self.frameworks = {f.framework: f for f in sorted(frameworks, key=lambda f: f.framework)}
        self.controls = {c.control_id: c for f in self.frameworks.values() for c in f.controls}
        self.aliases = {alias: target for f in self.frameworks.values() for alias, target in f.aliases.items()}

    def resolve(self, control_id: str, field: str = "control_id") -> Control:
        """The control with this id or alias; InvalidArgument if empty, NotFound if unknown."""
        if not control_id:
            raise InvalidArgument(field, "is required")
        if len(control_id) > 100:
            raise InvalidArgument(field, "is longer than 100 characters")
        found = self.controls.get(self.aliases.get(control_id, control_id))
        if found is None:
            raise NotFound("control", control_id)
        return found

    def of(self, frameworks: Iterable[Framework]) -> list[Control]:
        """The controls of these frameworks, by control id."""
        wanted = set(frameworks)
        return sorted((c for c in self.controls.values() if c.framework in wanted), key=lambda c: c.control_id)

    def checks(self, frameworks: Iterable[Framework]) -> set[str]:
        """The checks the automated controls of these frameworks rest on."""
        return {check for c in self.of(frameworks) if c.automated for check in c.checks}


def parse_framework(document: dict[str, object], known_checks: set[str]) -> FrameworkEntry:
    """One catalog file's framework; ValueError naming what is wrong."""
    framework = Framework[str(document["framework"])]
    prefix = str(document["id_prefix"])
    controls = []
    for raw in document["controls"]:  # type: ignore[attr-defined]
        checks = tuple(raw["checks"])
        unknown = set(checks) - known_checks
        if unknown:
            raise ValueError(f"{framework.name} {raw['ref']}: unknown checks {sorted(unknown)}")
        controls.append(
            Control(
                control_id=prefix + raw["ref"],
                framework=framework,
                reference=raw["ref"],
                family=raw["family"],
                title=raw["title"],
                description=raw["description"],
                severity=Severity[raw["severity"]],
                automated=bool(raw["automated"]) and bool(checks),
                checks=checks,
                remediation=raw["remediation"],
            )
        )
    ids = {c.control_id for c in controls}
    aliases = {prefix + alias: prefix + target for alias, target in dict(document["aliases"]).items()}  # type: ignore[call-overload]
    dangling = set(aliases.values()) - ids
    if dangling:
        raise ValueError(f"{framework.name}: aliases to unknown controls {sorted(dangling)}")
    return FrameworkEntry(
        framework=framework,
        name=str(document["name"]),
        version=str(document["version"]),
        catalog_version=int(document["catalog_version"]),  # type: ignore[call-overload]
        description=str(document["description"]),
        controls=tuple(controls),
        aliases=aliases,
    )


def load_catalog(known_checks: set[str]) -> Catalog:
    """The catalog shipped in the package."""
    folder = resources.files("servers.compliance.catalog.frameworks")
    return Catalog(parse_framework(json.loads((folder / name).read_text()), known_checks) for name in FILES)
