"""Give every item a split (train / val / test), reproducibly.

Rules, so a user can predict what happens to their data:

- splits the user named (folders or a CSV ``split`` column) are never
  reshuffled;
- with no validation split, one is carved out of train (``val_fraction`` of
  all unsplit images); the test set, if given, is left alone;
- a test split is carved only when neither val nor test was given;
- the split is stratified by label (the whole label set for multi-label
  data), seeded, and keeps every class in train;
- ``group_by`` (a regular expression on the file name) keeps all images of a
  group, such as one product or one patient, on the same side, so the model
  is never tested on near-copies of its training images.

Written by hand rather than with scikit-learn's splitters because those fail
on classes with a single image and cannot combine groups with
stratification and a fixed seed the way this needs.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from imgclf.data.corrections import correct_dataset
from imgclf.data.sources import ImageDataset, Item, load_source
from imgclf.errors import ImgclfError


def load_dataset(
    source: str | Path,
    *,
    archive: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_by: str | None = None,
    corrections: str | Path | None = None,
    rename: Iterable[str] = (),
) -> ImageDataset:
    """Read ``source`` (folder, CSV manifest, ``cifar10``/``cifar100``) and give every image a split.

    See the module rules for which splits are carved and when. ``corrections``
    (a corrections CSV) and ``rename`` (``OLD=NEW`` class renames) apply after
    the split, so excluding or relabelling a few images leaves every other
    image on the side it was (:mod:`imgclf.data.corrections`).
    """
    dataset = load_source(source, Path(archive) if archive else None)
    dataset = assign_splits(dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                            group_by=group_by)
    return correct_dataset(dataset, corrections, rename)


def assign_splits(
    dataset: ImageDataset,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    group_by: str | None = None,
) -> ImageDataset:
    """Return a dataset whose every item has a split; see the module rules."""
    _check_fractions(val_fraction, test_fraction)
    group_key = _grouper(group_by)  # checked even when nothing is carved: a typo should not pass silently
    named = {item.split for item in dataset.items} - {None}
    carve = {"val": val_fraction if "val" not in named else 0.0,
             "test": test_fraction if not named & {"val", "test"} else 0.0}
    pool = [item for item in dataset.items if item.split in (None, "train")]
    if not any(carve.values()):
        items = [item if item.split else replace(item, split="train") for item in dataset.items]
        return dataset.with_items(items)
    assigned = _stratified_split(pool, carve, seed, group_key)
    kept = [item for item in dataset.items if item.split not in (None, "train")]
    return dataset.with_items(sorted(kept + assigned, key=lambda item: (item.split or "", str(item.path))))


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ImgclfError(f"{name} {value} is outside [0, 1); give a fraction such as 0.1")
    if val_fraction + test_fraction >= 1.0:
        raise ImgclfError(
            f"--val-fraction {val_fraction} plus --test-fraction {test_fraction} leaves nothing to train on; keep their sum below 1"
        )


def _grouper(group_by: str | None) -> Callable[[Item], str]:
    """Map an item to its group key: the pattern's first group, else its whole match."""
    if group_by is None:
        return lambda item: str(item.path)
    try:
        pattern = re.compile(group_by)
    except re.error as error:
        raise ImgclfError(f"--group-by '{group_by}' is not a valid regular expression ({error})") from None

    def key(item: Item) -> str:
        match = pattern.search(item.path.name)
        if match is None:
            return str(item.path)  # no group: the image stands alone
        if not pattern.groups:
            return match.group(0)
        # The first group that took part: (a)|(b) uses whichever matched; an optional
        # group that matched nothing leaves the image alone rather than a None key.
        found = next((group for group in match.groups() if group is not None), None)
        return str(item.path) if found is None else found

    return key


def _stratified_split(pool: list[Item], carve: dict[str, float], seed: int,
                      group_key: Callable[[Item], str]) -> list[Item]:
    """Split ``pool`` by whole groups, stratum by stratum (label set of the group's first image)."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in sorted(pool, key=lambda item: str(item.path)):
        groups[group_key(item)].append(item)
    strata: dict[tuple[str, ...], list[list[Item]]] = defaultdict(list)
    for key in sorted(groups):
        members = groups[key]
        strata[members[0].labels].append(members)
    sizes = {stratum: sum(len(unit) for unit in units) for stratum, units in strata.items()}
    targets = {split: _allocate(sizes, fraction) for split, fraction in carve.items()}
    rng = random.Random(seed)
    result: list[Item] = []
    for stratum in sorted(strata):
        units = strata[stratum]
        rng.shuffle(units)
        filled = dict.fromkeys(carve, 0)
        for position, unit in enumerate(units):
            split = _next_split({name: per_stratum[stratum] for name, per_stratum in targets.items()}, filled,
                                units_left=len(units) - position)
            filled[split] = filled.get(split, 0) + len(unit)
            result += [replace(item, split=split) for item in unit]
    return result


def _allocate(sizes: dict[tuple[str, ...], int], fraction: float) -> dict[tuple[str, ...], int]:
    """Images each stratum gives to a split: proportional, with the rounding
    remainders handed out so the total is right (and at least one image when
    ``fraction`` > 0), instead of every small class rounding down to none."""
    exact = {stratum: size * fraction for stratum, size in sizes.items()}
    counts = {stratum: int(value) for stratum, value in exact.items()}
    wanted = max(round(sum(sizes.values()) * fraction), 1 if fraction > 0 else 0)
    by_remainder = sorted(exact, key=lambda stratum: (counts[stratum] - exact[stratum], stratum))
    for stratum in by_remainder[:max(0, wanted - sum(counts.values()))]:
        counts[stratum] += 1
    return counts


def _next_split(targets: dict[str, int], filled: dict[str, int], units_left: int) -> str:
    """Test first, then val, until each reaches its target; the last unit always trains.

    A group larger than what is left of a target still goes in (overshooting
    it) rather than leaving the split empty when groups are big.
    """
    if units_left > 1:
        for split in ("test", "val"):
            if filled[split] < targets[split]:
                return split
    return "train"


def require_training_images(dataset: ImageDataset, what: str = "training images",
                            fix: str = "rename or merge each folder to match a training class, or remove it") -> None:
    """Refuse a class with no training image, naming it and the splits it appears in.

    Such a class can never be learned, yet it still counts in the head: label
    smoothing gives it a share of every target, so its loss is paid on every
    training image (and a probe must invent a bias for it). It is nearly
    always a folder renamed in one split, so the fix is the user's to make.
    ``what`` says which training images were counted (e.g. only the decodable
    ones) and ``fix`` what the user can do about it.
    """
    counts = dataset.class_counts()
    missing = {name: [split for split, count in per_split.items() if count] for name, per_split in counts.items()
               if not per_split.get("train")}
    if not missing:
        return
    named = "; ".join(f"'{name}' ({'only in ' + ', '.join(splits) if splits else 'none in any split'})"
                      for name, splits in list(missing.items())[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    renames = _suggested_renames(list(missing), [name for name in counts if name not in missing])
    suggestion = f" (or, leaving the folders as they are: {' '.join(renames)})" if renames else ""
    raise ImgclfError(
        f"{dataset.source}: {len(missing)} class(es) have no {what}: {named}{more}; {fix}{suggestion}"
    )


def _suggested_renames(missing: list[str], trained: list[str]) -> list[str]:
    """``--rename OLD=NEW`` for each class without training images whose last path part names a training class.

    A test folder ``Roses`` beside a training ``roses``, or ``flowers/roses``
    beside ``roses``: the same class spelt two ways, which a rename merges.
    """
    def last_part(name: str) -> str:
        return re.sub(r"[\s_-]+", " ", name.rsplit("/", 1)[-1]).strip().lower()

    by_part: dict[str, list[str]] = defaultdict(list)
    for name in trained:
        by_part[last_part(name)].append(name)
    suggestions = []
    for name in missing:
        matches = by_part.get(last_part(name), [])
        if len(matches) == 1:
            pair = f"{name}={matches[0]}"
            suggestions.append(f"--rename '{pair}'" if re.search(r"[^\w/.=-]", pair) else f"--rename {pair}")
    return suggestions
