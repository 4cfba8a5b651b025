"""The files a command did not use, grouped by reason: what every data-reading command reports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5


def _kind(reason: str) -> str:
    return reason.split("(")[0].split(":")[0].strip() or "unreadable"


@dataclass
class UnusedFiles:
    """Files found (or listed) but not used, and why.

    Attributes:
        files: path -> reason, in the order they were found.
    """

    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def collect(cls, report=None, errors: Mapping[str, str] | None = None) -> UnusedFiles:
        """From a :class:`~transferkit.data.imageset.DataReport` (rejected and missing files) and
        per-path errors found later (e.g. images that failed to decode during feature extraction)."""
        files: dict[str, str] = {}
        if report is not None:
            files.update({r.path: r.reason for r in report.rejected})
            files.update({p: "listed but missing on disk" for p in report.missing})
        files.update({str(p): str(r) for p, r in (errors or {}).items()})
        return cls(files)

    def __len__(self) -> int:
        return len(self.files)

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason in self.files.values():
            out[_kind(reason)] = out.get(_kind(reason), 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """One line for the console: the count, the reasons, the first few paths, where to look."""
        if not self.files:
            return "all files were used"
        reasons = ", ".join(f"{n} {kind}" for kind, n in self.by_reason().items())
        first = ", ".join(list(self.files)[:EXAMPLES])
        more = f" and {len(self.files) - EXAMPLES} more" if len(self.files) > EXAMPLES else ""
        return f"{len(self.files)} file(s) not used ({reasons}): {first}{more}; see `transferkit data inspect`"

    def to_dict(self) -> dict[str, Any]:
        return {"count": len(self.files), "by_reason": self.by_reason(),
                "files": [{"path": p, "reason": r} for p, r in self.files.items()]}


__all__ = ["UnusedFiles"]
