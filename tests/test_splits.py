"""assign_splits: fractions, seeds, user splits left alone, groups, multi-label, bad options."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from imgclf.data.sources import ImageDataset, Item
from imgclf.data.splits import assign_splits
from imgclf.errors import ImgclfError

# assign_splits never opens a file, so items can name paths that do not exist.
ROOT = Path("/data")


def dataset_of(counts: dict[str, int], split: str | None = None, prefix: str = "") -> ImageDataset:
    items = [
        Item(path=ROOT / (split or "all") / label / f"{prefix}{label}_{n:03d}.jpg", labels=(label,), split=split)
        for label, count in counts.items()
        for n in range(count)
    ]
    return ImageDataset(items=items, classes=sorted(counts))


def merged(*datasets: ImageDataset) -> ImageDataset:
    items = [item for dataset in datasets for item in dataset.items]
    classes = sorted({label for item in items for label in item.labels})
    return ImageDataset(items=items, classes=classes)


def per_class_split(dataset: ImageDataset) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for item in dataset.items:
        counts[item.label][item.split] += 1
    return dict(counts)


def assignment(dataset: ImageDataset) -> dict[Path, str | None]:
    return {item.path: item.split for item in dataset.items}


def test_default_split_is_80_10_10_per_class() -> None:
    original = dataset_of({"cat": 50, "dog": 50, "eel": 50})
    result = assign_splits(original)
    assert len(result.items) == 150
    assert sorted(item.path for item in result.items) == sorted(item.path for item in original.items)
    for label, counts in per_class_split(result).items():
        assert counts == Counter({"train": 40, "val": 5, "test": 5}), label
    assert result.splits == ["train", "val", "test"]
    assert result.classes == original.classes
    assert all(item.split is None for item in original.items), "the input is not modified"


@pytest.mark.parametrize("count", [7, 13, 25, 33])
def test_counts_follow_rounding_of_each_class(count: int) -> None:
    result = assign_splits(dataset_of({"a": count, "b": 20}), val_fraction=0.15, test_fraction=0.2)
    counts = per_class_split(result)
    expected_val, expected_test = round(count * 0.15), round(count * 0.2)
    assert counts["a"]["val"] == expected_val
    assert counts["a"]["test"] == expected_test
    assert counts["a"]["train"] == count - expected_val - expected_test
    assert counts["b"] == Counter({"train": 13, "val": 3, "test": 4})


def test_same_seed_same_assignment_different_seed_different() -> None:
    dataset = dataset_of({"cat": 40, "dog": 40})
    first = assign_splits(dataset, seed=7)
    again = assign_splits(dataset, seed=7)
    other = assign_splits(dataset, seed=8)
    assert [(item.path, item.split) for item in first.items] == [(item.path, item.split) for item in again.items]
    assert assignment(first) != assignment(other)
    assert per_class_split(first) == per_class_split(other), "only which images, not how many"


def test_assignment_does_not_depend_on_input_order() -> None:
    dataset = dataset_of({"cat": 30, "dog": 30})
    shuffled = dataset.with_items(list(reversed(dataset.items)))
    assert assignment(assign_splits(dataset, seed=3)) == assignment(assign_splits(shuffled, seed=3))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_class_keeps_a_training_image(count: int) -> None:
    dataset = dataset_of({"big": 30, "tiny": count})
    for val, test in ((0.1, 0.1), (0.4, 0.4), (0.3, 0.6)):
        for seed in range(5):
            counts = per_class_split(assign_splits(dataset, val_fraction=val, test_fraction=test, seed=seed))
            assert counts["tiny"]["train"] >= 1, (val, test, seed)
            assert counts["big"]["train"] >= 1
            assert sum(counts["tiny"].values()) == count


def test_given_train_and_test_carves_val_from_train_only() -> None:
    train = dataset_of({"cat": 30, "dog": 30}, split="train")
    test = dataset_of({"cat": 7, "dog": 3}, split="test")
    result = assign_splits(merged(train, test))
    before_test = {item.path for item in test.items}
    after = assignment(result)
    assert {path for path, split in after.items() if split == "test"} == before_test, "test untouched"
    val = {path for path, split in after.items() if split == "val"}
    assert val and val <= {item.path for item in train.items}
    assert per_class_split(result)["cat"] == Counter({"train": 27, "val": 3, "test": 7})
    assert per_class_split(result)["dog"] == Counter({"train": 27, "val": 3, "test": 3})


def test_unsplit_and_train_items_together_with_a_test_split() -> None:
    unsplit = dataset_of({"cat": 10}, prefix="u")
    train = dataset_of({"cat": 10}, split="train", prefix="t")
    test = dataset_of({"cat": 4}, split="test")
    result = assign_splits(merged(unsplit, train, test))
    counts = per_class_split(result)["cat"]
    assert counts == Counter({"train": 18, "val": 2, "test": 4})
    assert all(item.split is not None for item in result.items)


def test_given_train_and_val_carves_nothing() -> None:
    train = dataset_of({"cat": 20, "dog": 20}, split="train")
    val = dataset_of({"cat": 2, "dog": 2}, split="val")
    original = merged(train, val)
    result = assign_splits(original)
    assert assignment(result) == assignment(original)
    assert "test" not in result.splits


def test_given_val_and_unsplit_items_the_rest_trains() -> None:
    unsplit = dataset_of({"cat": 10})
    val = dataset_of({"cat": 2}, split="val")
    result = assign_splits(merged(unsplit, val))
    assert per_class_split(result)["cat"] == Counter({"train": 10, "val": 2})


def test_given_all_three_is_unchanged() -> None:
    original = merged(
        dataset_of({"cat": 10, "dog": 10}, split="train"),
        dataset_of({"cat": 2, "dog": 2}, split="val"),
        dataset_of({"cat": 3, "dog": 3}, split="test"),
    )
    result = assign_splits(original, val_fraction=0.3, test_fraction=0.3, seed=99)
    assert assignment(result) == assignment(original)
    assert len(result.items) == len(original.items)


def test_group_by_keeps_each_group_on_one_side() -> None:
    items = []
    for label in ("cat", "dog"):
        for product in range(30):
            for view in "abc"[: 1 + product % 3]:
                name = f"prod{label}{product}_{view}.jpg"
                items.append(Item(path=ROOT / label / name, labels=(label,)))
    dataset = ImageDataset(items=items, classes=["cat", "dog"])
    for seed in range(3):
        result = assign_splits(dataset, seed=seed, group_by=r"^(prod\w+?)_")
        sides: dict[str, set[str | None]] = defaultdict(set)
        for item in result.items:
            sides[item.path.name.split("_")[0]].add(item.split)
        assert len(sides) == 60
        assert all(len(split_set) == 1 for split_set in sides.values()), "a product straddles splits"
        used = Counter(next(iter(split_set)) for split_set in sides.values())
        assert used["train"] and used["val"] and used["test"]
        assert len(result.items) == len(items)


def test_group_by_without_a_capture_group_uses_the_whole_match() -> None:
    items = [
        Item(path=ROOT / "cat" / f"patient{p:02d}-scan{s}.png", labels=("cat",)) for p in range(20) for s in range(3)
    ]
    result = assign_splits(ImageDataset(items=items, classes=["cat"]), group_by=r"patient\d+")
    sides: dict[str, set[str | None]] = defaultdict(set)
    for item in result.items:
        sides[item.path.name.split("-")[0]].add(item.split)
    assert all(len(split_set) == 1 for split_set in sides.values())
    assert {split for split_set in sides.values() for split in split_set} == {"train", "val", "test"}


def test_group_by_same_key_across_classes_stays_together() -> None:
    items = [
        Item(path=ROOT / label / f"item{n:02d}_{label}.jpg", labels=(label,)) for n in range(20) for label in ("a", "b")
    ]
    result = assign_splits(ImageDataset(items=items, classes=["a", "b"]), group_by=r"(item\d+)_", seed=1)
    by_key: dict[str, set[str | None]] = defaultdict(set)
    for item in result.items:
        by_key[item.path.name.split("_")[0]].add(item.split)
    assert all(len(split_set) == 1 for split_set in by_key.values())


def test_files_not_matching_group_by_stand_alone() -> None:
    items = [Item(path=ROOT / "cat" / f"loose{n:02d}.jpg", labels=("cat",)) for n in range(20)]
    result = assign_splits(ImageDataset(items=items, classes=["cat"]), group_by=r"(prod\d+)_")
    assert per_class_split(result)["cat"] == Counter({"train": 16, "val": 2, "test": 2})


def test_invalid_group_by_regex() -> None:
    with pytest.raises(ImgclfError, match="--group-by"):
        assign_splits(dataset_of({"cat": 10}), group_by="(unclosed")


@pytest.mark.parametrize(
    ("val", "test"),
    [(-0.1, 0.1), (0.1, -0.1), (1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.7, 0.4), (1.5, 0.1)],
)
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ImgclfError, match="fraction"):
        assign_splits(dataset_of({"cat": 10}), val_fraction=val, test_fraction=test)


def test_zero_fractions_put_everything_in_train() -> None:
    result = assign_splits(dataset_of({"cat": 10, "dog": 3}), val_fraction=0.0, test_fraction=0.0)
    assert {item.split for item in result.items} == {"train"}


def test_multilabel_is_stratified_by_label_set() -> None:
    items = []
    for labels, count in ((("beach",), 20), (("beach", "sunset"), 20), (("dog",), 20), (("cat", "dog"), 1)):
        for n in range(count):
            items.append(Item(path=ROOT / f"{'-'.join(labels)}_{n:02d}.jpg", labels=labels))
    dataset = ImageDataset(items=items, classes=["beach", "cat", "dog", "sunset"], multilabel=True)
    result = assign_splits(dataset, seed=4)
    by_set: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for item in result.items:
        by_set[item.labels][item.split] += 1
    for labels in (("beach",), ("beach", "sunset"), ("dog",)):
        assert by_set[labels] == Counter({"train": 16, "val": 2, "test": 2}), labels
    assert by_set[("cat", "dog")] == Counter({"train": 1})
    assert result.multilabel is True
    train_labels = {label for item in result.split_items("train") for label in item.labels}
    assert train_labels == {"beach", "cat", "dog", "sunset"}


def test_group_by_with_alternative_capture_groups() -> None:
    items = [Item(path=ROOT / "c" / f"prod{n:02d}_{v}.jpg", labels=("c",)) for n in range(10) for v in "ab"]
    items += [Item(path=ROOT / "c" / f"sku{n:02d}_{v}.jpg", labels=("c",)) for n in range(10) for v in "ab"]
    result = assign_splits(ImageDataset(items=items, classes=["c"]), group_by=r"(prod\d+)|(sku\d+)")
    sides: dict[str, set[str | None]] = defaultdict(set)
    for item in result.items:
        sides[item.path.name.split("_")[0]].add(item.split)
    assert len(sides) == 20
    assert all(len(split_set) == 1 for split_set in sides.values())


def test_group_by_optional_group_that_matched_nothing_leaves_images_alone() -> None:
    items = [Item(path=ROOT / "c" / f"prod{n:02d}_{v}.jpg", labels=("c",)) for n in range(10) for v in "ab"]
    items += [Item(path=ROOT / "c" / f"x_{n:02d}.jpg", labels=("c",)) for n in range(20)]
    result = assign_splits(ImageDataset(items=items, classes=["c"]), group_by=r"(prod\d+)?_")
    sides: dict[str, set[str | None]] = defaultdict(set)
    for item in result.items:
        if item.path.name.startswith("prod"):
            sides[item.path.name.split("_")[0]].add(item.split)
    assert all(len(split_set) == 1 for split_set in sides.values())
    loose = Counter(item.split for item in result.items if item.path.name.startswith("x_"))
    assert len(loose) > 1, "loose images are not lumped into one group"


def test_large_groups_still_fill_val_and_test() -> None:
    items = [Item(Path(f"/d/sku{c}{g}_{n}.jpg"), (f"class{c}",)) for c in range(5) for g in range(4) for n in range(10)]
    dataset = ImageDataset(items=items, classes=[f"class{c}" for c in range(5)])
    result = assign_splits(dataset, group_by=r"^(sku\d+)_")
    counts = {split: len(result.split_items(split)) for split in ("train", "val", "test")}
    assert counts["val"] > 0 and counts["test"] > 0 and counts["train"] > counts["val"]
    groups: dict[str, set[str]] = {}
    for item in result.items:
        groups.setdefault(item.path.name.split("_")[0], set()).add(item.split)
    assert all(len(splits) == 1 for splits in groups.values())
