"""What the review page shows and records: items with their evidence, decisions, and the source behind both.

A source knows what is doubtful and where decisions are kept; the page
component (:mod:`imgclf.review.component`) only renders and relays. Images are
named by an index into the source's own list of files, so the browser never
sends a path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Evidence:
    """An image shown beside an item to help decide it (its duplicate, a neighbour of a class)."""

    image: int
    caption: str


@dataclass(frozen=True)
class ReviewItem:
    """One finding about one image: its kind and class (the page groups by both), the answer given and the evidence.

    ``key`` names what a decision is about (a file's path, a logged
    prediction's id): several findings about one image share it, and so one
    decision. ``group`` ties the members of one near-duplicate group together
    for the bulk "keep one of each" action.
    """

    key: str
    image: int
    kind: str
    label: str
    answer: str
    reason: str = ""
    suggestions: tuple[tuple[str, float | None], ...] = ()  # (label, probability; None where there is none)
    evidence: tuple[Evidence, ...] = ()
    group: str = ""

    def to_json(self) -> dict[str, Any]:
        described = asdict(self)
        described["suggestions"] = [{"label": label, "probability": p} for label, p in self.suggestions]
        return described


@dataclass(frozen=True)
class Decision:
    """A person's decision about one key: an action of the source's, the label it gives (relabel, correct) and when."""

    action: str
    label: str = ""
    time: str = ""


@dataclass(frozen=True)
class BulkAction:
    """A decision for many items at once, offered as a button (e.g. "exclude all broken files")."""

    name: str
    title: str


@dataclass
class Counts:
    """The figures the page shows above the items: what is left to decide and, for a queue, accuracy over time."""

    items: int
    decided: int
    accuracy: list[dict[str, Any]] = field(default_factory=list)  # [{"period", "reviewed", "correct", "accuracy"}]


class ReviewSource(Protocol):
    """What the page needs from whatever it reviews; decisions go through it to its own file or database.

    ``decisions`` re-reads the store on every call, and ``decide``/``undecide``
    change one key under the store's lock, so two people on one page (or two
    processes) keep each other's decisions.
    """

    title: str
    actions: tuple[str, ...]  # e.g. ("keep", "exclude", "relabel"); an action that takes a label is in label_actions
    label_actions: tuple[str, ...]
    where: str  # where decisions go, said on the page
    label_name: str  # what an item's label is: "label" (given by the data) or "answer" (the model's)

    def classes(self) -> list[str]: ...

    def items(self) -> list[ReviewItem]: ...

    def image(self, index: int) -> Path | None: ...

    def decisions(self) -> dict[str, Decision]: ...

    def decide(self, changes: dict[str, Decision | None]) -> None: ...

    def bulk_actions(self) -> list[BulkAction]: ...

    def bulk(self, name: str) -> dict[str, Decision]: ...

    def counts(self) -> Counts: ...
