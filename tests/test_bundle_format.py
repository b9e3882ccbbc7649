"""model.json across imgclf versions: a bundle writes the later optional fields only when it uses them, so it loads
in the versions from before them; a bundle that needs what this imgclf does not know is refused by name, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_image, run_cli, untrained_bundle

from imgclf.deploy.bundle import BUNDLE_FORMAT, LATER_FIELDS, BundleInfo, read_bundle_info, update_bundle_info
from imgclf.errors import ImgclfError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_bundle(tmp_path_factory.mktemp("format"))


def copy_with(bundle: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    values = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**values, **changes}))
    return copy


def test_the_later_fields_mean_not_used_at_the_values_older_versions_assume() -> None:
    # an older imgclf reads a bundle without these fields as if they held these values: they must stay the defaults
    defaults = {name: BundleInfo.__dataclass_fields__[name].default for name in LATER_FIELDS}
    assert defaults == LATER_FIELDS == {"tta_shift": 0, "tta_zoom": 0.0}


def test_a_bundle_writes_a_later_field_only_when_it_uses_it(bundle: Path, tmp_path: Path) -> None:
    written = json.loads((bundle / "model.json").read_text())
    assert not set(LATER_FIELDS) & set(written)
    assert {"architecture", "classes", "tta", "temperature", "format_version"} <= set(written)
    assert read_bundle_info(bundle) == BundleInfo(**written)  # the missing fields read back as their defaults

    zoomed = copy_with(bundle, tmp_path)
    update_bundle_info(zoomed, tta=True, tta_zoom=0.875)
    rewritten = json.loads((zoomed / "model.json").read_text())
    assert rewritten["tta_zoom"] == 0.875 and "tta_shift" not in rewritten
    assert read_bundle_info(zoomed).tta_zoom == 0.875


def test_a_bundle_using_a_field_this_imgclf_does_not_know_is_refused_by_name(bundle: Path, tmp_path: Path) -> None:
    future = copy_with(bundle, tmp_path, tta_rotate=15, imgclf_version="9.0.0")
    with pytest.raises(ImgclfError) as raised:
        read_bundle_info(future)
    message = str(raised.value)
    assert "imgclf 9.0.0" in message and "tta_rotate" in message and "upgrade imgclf" in message
    assert "not a valid" not in message

    image = make_image(tmp_path / "a.png", (220, 30, 30))
    result = run_cli("predict", str(future), str(image))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and "tta_rotate" in errors[0] and "upgrade imgclf" in errors[0]


def test_a_newer_bundle_format_is_refused_before_its_fields_are_read(bundle: Path, tmp_path: Path) -> None:
    newer = copy_with(bundle, tmp_path, format_version=BUNDLE_FORMAT + 1, shape="nhwc", imgclf_version="9.0.0")
    with pytest.raises(ImgclfError, match=f"bundle format {BUNDLE_FORMAT + 1}.*upgrade imgclf"):
        read_bundle_info(newer)


@pytest.mark.parametrize("text", ["[1, 2]", "{\"architecture\": \"fastnet\"}", "{not json"],
                         ids=["not an object", "fields missing", "not JSON"])
def test_a_broken_model_description_is_refused_as_invalid(bundle: Path, tmp_path: Path, text: str) -> None:
    broken = copy_with(bundle, tmp_path)
    (broken / "model.json").write_text(text)
    with pytest.raises(ImgclfError, match="model.json is not a valid imgclf model description"):
        read_bundle_info(broken)


def test_a_bundles_content_id_names_its_weights_and_description_not_its_folder(bundle: Path, tmp_path: Path) -> None:
    from imgclf.deploy.metadata import bundle_content_id

    same = tmp_path / "copy"
    shutil.copytree(bundle, same)
    assert bundle_content_id(same) == bundle_content_id(bundle)
    assert len(bundle_content_id(bundle)) == 12
    update_bundle_info(same, temperature=1.5)
    assert bundle_content_id(same) != bundle_content_id(bundle)
