"""Tests of the benchmark-layout dataset: path resolution, crop dictionaries, escaping paths, unsafe pickles.

Builds tiny DeepKE-layout folders in tmp_path; image contents do not matter here, only where files are.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from exit_codes import InputError, UsageError
from pipeline.io.dataset import BenchmarkDataset, load_crop_dict
from pipeline.io.safe_paths import UnsafePathError, safe_resolve

SPLIT = "IMGID:{id}\nJordan\tB-PER\nrocks\tO\n\n"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _layout(tmp_path: Path) -> Path:
    """data/twitter2015 with images 1 and 2 (3 missing), grounding and RCNN crops for image 1."""
    root = tmp_path / "data" / "twitter2015"
    root.mkdir(parents=True)
    (root / "train.txt").write_text(SPLIT.format(id=1) + SPLIT.format(id=3))
    (root / "dev.txt").write_text(SPLIT.format(id=2))
    for i in (1, 2):
        _touch(root / "twitter2015_images" / f"{i}.jpg")
    crops = root / "twitter2015_aux_images" / "train" / "crops"
    names = [f"1_pred_yolo_crop_{n}.png" for n in range(5)]
    for n in names[:4]:
        if n != names[1]:
            _touch(crops / n)  # crop 1 is listed but missing
    torch.save({"1.jpg": names, "3.jpg": []}, root / "twitter2015_train_dict.pth")
    torch.save({"2.jpg": ["2_pred_yolo_crop_0.png"]}, root / "twitter2015_val_dict.pth")
    _touch(crops.parent.parent / "val" / "crops" / "2_pred_yolo_crop_0.png")
    rcnn = [f"twitter15_detect/crops/1_{n}.jpg" for n in range(4)]
    for r in rcnn:
        _touch(root / r)
    _touch(root.parent / "legacy" / "2_0.jpg")  # an HVPNeT-style path relative to data_dir
    torch.save({"1": rcnn, "2": ["legacy/2_0.jpg"]}, root / "twitter15_detect" / "twitter15_img2crop.pth")
    return root


def test_layout_resolution(tmp_path):
    root = _layout(tmp_path)
    ds = BenchmarkDataset(root.parent, "twitter2015")
    assert ds.splits() == ["train", "valid"] and ds.split_file("dev") == root / "dev.txt"
    assert [t.image_id for t in ds.read("train")] == ["1", "3"]
    assert ds.image_path("1") == (root / "twitter2015_images" / "1.jpg").resolve()
    assert ds.image_path("3") is None and ds.image_path("") is None
    crops = root.resolve() / "twitter2015_aux_images" / "train" / "crops"
    # first 3 listed, the missing one dropped
    assert ds.grounding_crops("train", "1") == [crops / "1_pred_yolo_crop_0.png", crops / "1_pred_yolo_crop_2.png"]
    assert len(ds.grounding_entries("train", "1")) == 3
    assert ds.grounding_crops("valid", "1") == [] and ds.grounding_crops("val", "2")[0].name == "2_pred_yolo_crop_0.png"
    assert ds.grounding_crops(None, "2") == ds.grounding_crops("valid", "2")
    assert [p.name for p in ds.rcnn_crops("1")] == ["1_0.jpg", "1_1.jpg", "1_2.jpg"]
    assert ds.rcnn_crops("2") == [(tmp_path / "data" / "legacy" / "2_0.jpg").resolve()]
    assert ds.rcnn_crops("3") == []
    with pytest.raises(UsageError, match="unknown split 'dveo'"):
        ds.split_file("dveo")
    with pytest.raises(InputError, match="no test split"):
        ds.split_file("test")


def test_from_split_file_and_folder(tmp_path):
    root = _layout(tmp_path)
    ds = BenchmarkDataset.from_split_file(root / "dev.txt")
    assert (ds.name, ds.split, ds.root) == ("twitter2015", "valid", root)
    assert ds.grounding_crops(ds.split, "2") and BenchmarkDataset.from_folder(root).splits() == ["train", "valid"]
    with pytest.raises(InputError, match="dataset folder not found"):
        BenchmarkDataset(tmp_path, "twitter2017")


def test_text_only_folder(tmp_path):
    root = tmp_path / "twitter2017"
    root.mkdir()
    (root / "train.txt").write_text(SPLIT.format(id="17_06_1"))
    ds = BenchmarkDataset(tmp_path, "twitter2017")
    assert ds.splits() == ["train"] and ds.img2crop_path.name == "twitter17_img2crop.pth"
    assert ds.image_path("17_06_1") is None
    assert ds.grounding_crops("train", "17_06_1") == [] and ds.rcnn_crops("17_06_1") == []


def test_safe_resolve_rejects_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    _touch(tmp_path / "secret.txt")
    assert safe_resolve(root, "sub/a.png") == root.resolve() / "sub" / "a.png"
    assert safe_resolve(root, root / "sub" / "a.png") == root.resolve() / "sub" / "a.png"  # absolute inside: ok
    os.symlink(root / "sub", root / "inside_link")
    assert safe_resolve(root, "inside_link/a.png") == root.resolve() / "sub" / "a.png"
    os.symlink(tmp_path / "secret.txt", root / "sub" / "out_link.png")
    for bad in ["../secret.txt", "sub/../../secret.txt", str(tmp_path / "secret.txt"), "/etc/passwd",
                "sub/out_link.png", "", "a\x00b"]:
        with pytest.raises(UnsafePathError):
            safe_resolve(root, bad)
    assert issubclass(UnsafePathError, InputError)


def test_escaping_dataset_entries(tmp_path):
    root = _layout(tmp_path)
    _touch(tmp_path / "secret.jpg")
    torch.save({"1.jpg": ["../../../../../secret.jpg"]}, root / "twitter2015_train_dict.pth")
    torch.save({"1": ["/etc/passwd"]}, root / "twitter15_detect" / "twitter15_img2crop.pth")
    os.symlink(tmp_path / "secret.jpg", root / "twitter2015_images" / "9.jpg")
    ds = BenchmarkDataset(root.parent, "twitter2015")
    with pytest.raises(UnsafePathError, match="outside"):
        ds.grounding_crops("train", "1")
    with pytest.raises(UnsafePathError, match="outside"):
        ds.rcnn_crops("1")
    with pytest.raises(UnsafePathError, match="outside"):
        ds.image_path("9")
    with pytest.raises(UnsafePathError):
        ds.image_path("../../../secret")


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_malicious_pickle_is_refused(tmp_path):
    root = _layout(tmp_path)
    target = tmp_path / "pwned"
    torch.save({"1.jpg": _Evil(target)}, root / "twitter2015_train_dict.pth")
    ds = BenchmarkDataset(root.parent, "twitter2015")
    with pytest.raises(InputError, match=r"twitter2015_train_dict\.pth: refused to load") as e:
        ds.grounding_crops("train", "1")
    assert not target.exists() and "weights_only` set to `False`" not in str(e.value)
    assert ds.image_path("1") is not None  # the rest of the dataset still works


@pytest.mark.parametrize("obj, what", [
    (["a.png"], "expected a dict"),
    ({"1.jpg": "a.png"}, "'1.jpg' is not str -> list"),
    ({1: ["a.png"]}, "entry 1 is not"),
    ({"1.jpg": ["a.png", 3]}, "'1.jpg' is not"),
])
def test_bad_dictionaries(tmp_path, obj, what):
    path = tmp_path / "d.pth"
    torch.save(obj, path)
    with pytest.raises(InputError, match=rf"{path}: .*{what}"):
        load_crop_dict(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=rf"{path}: cannot read"):
        load_crop_dict(path)
