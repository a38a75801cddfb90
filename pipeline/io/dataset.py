"""A benchmark dataset folder in the DeepKE/HVPNeT layout: CoNLL splits, images, grounding and RCNN crop dictionaries.

Resolves every image and crop path inside the dataset root and loads `.pth` dictionaries with weights_only=True.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

from exit_codes import InputError, UsageError
from pipeline.io.conll import Tweet, read_conll
from pipeline.io.safe_paths import UnsafePathError, safe_resolve

__all__ = ["load_crop_dict", "BenchmarkDataset", "SPLITS", "MAX_CROPS"]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MAX_CROPS = 3  # default crops of each kind used per image, as in DeepKE
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "val": "valid", "test": "test"}
_SPLIT_FILES = {"train": ("train.txt",), "valid": ("valid.txt", "dev.txt", "val.txt"), "test": ("test.txt",)}
_DICT_TAG = {"train": "train", "valid": "val", "test": "test"}  # split -> twitter2015_<tag>_dict.pth, aux_images/<tag>
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def load_crop_dict(path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a crop dictionary `.pth` with torch.load(weights_only=True): a dict of str -> list of str.

    A pickle that needs arbitrary code (or any other non-plain object) is refused, never executed: InputError.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message starts with advice to retry with weights_only=False: keep only the reason line
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if re.search(r"unsupported|GLOBAL|not an allowed", x, re.I)
                    and "weights_only` set to" not in x), "the unpickler met an object it does not allow")
        if not zipfile.is_zipfile(path) and not path.read_bytes()[:1] == b"\x80":  # neither zip nor legacy pickle
            raise InputError(f"{path}: cannot read this .pth (not a torch.save file); "
                             "re-create it with torch.save(dict_of_str_lists)") from None
        raise InputError(f"{path}: refused to load: not a plain dictionary of strings ({why[:200]}); it was not "
                         "unpickled. Re-save it as a dict of str -> list[str] with torch.save") from None
    except Exception as e:  # corrupt zip, truncated file, not a torch file at all
        raise InputError(f"{path}: cannot read this .pth ({type(e).__name__}: {str(e)[:200]}); "
                         "re-create it with torch.save(dict_of_str_lists)") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of str -> list[str], got {type(obj).__name__}; re-save it")
    out: dict[str, list[str]] = {}
    for key, value in obj.items():
        good = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if not isinstance(key, str) or not good:
            raise InputError(f"{path}: entry {key!r} is not str -> list[str] (got {type(value).__name__}); "
                             "re-save the dictionary with string keys and lists of file names")
        out[key] = list(value)
    return out


def _short_name(name: str) -> str:
    """`twitter2015` -> `twitter15` (the detect folder's prefix); other names stay as they are."""
    m = re.fullmatch(r"twitter(\d\d)(\d\d)", name)
    return f"twitter{m.group(2)}" if m else name


class BenchmarkDataset:
    """`data_dir/name/` in the DeepKE layout; everything but the split files is optional (text-only is valid).

    `{train,valid,test}.txt`, `<name>_images/<id>.jpg`, `<name>_{train,val,test}_dict.pth` ("<id>.jpg" -> crop file
    names under `<name>_aux_images/<train|val|test>/crops/`), `twitterNN_detect/twitterNN_img2crop.pth` ("<id>" ->
    paths relative to the dataset folder, or to data_dir as a fallback). Dictionaries load lazily, once.
    """

    def __init__(self, data_dir: str | os.PathLike, name: str, max_crops: int = MAX_CROPS):
        self.max_crops = max_crops  # crops of each kind used per image (the vision section's max_crops)
        self.data_dir = Path(data_dir)
        self.name = name
        self.root = self.data_dir / name
        self.split: str | None = None  # set by from_split_file when the file name is a known split
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset folder not found; point to the folder holding {name}/ (data_dir) "
                             "or to the dataset folder itself, with {train,valid,test}.txt (DeepKE layout)")
        self.images_dir = self.root / f"{name}_images"
        self.aux_dir = self.root / f"{name}_aux_images"
        short = _short_name(name)
        self.img2crop_path = self.root / f"{short}_detect" / f"{short}_img2crop.pth"
        self._dicts: dict[str, dict[str, list[str]]] = {}

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "BenchmarkDataset":
        """The dataset whose root is `folder` (e.g. `data/twitter2015`)."""
        folder = Path(folder)
        return cls(folder.parent, folder.name)

    @classmethod
    def from_split_file(cls, path: str | os.PathLike) -> "BenchmarkDataset":
        """The dataset of the folder a split file sits in (for evaluate); `.split` = its split if the name says."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: split file not found; give a CoNLL .txt file inside a dataset folder")
        folder = Path(os.path.abspath(path)).parent
        ds = cls(folder.parent, folder.name)
        ds.split = _SPLIT_ALIASES.get(path.stem.lower())
        return ds

    # ---- splits -----------------------------------------------------------------------------------------------
    @staticmethod
    def canonical_split(split: str) -> str:
        """`dev`/`val` -> `valid`; raise UsageError for an unknown split name."""
        try:
            return _SPLIT_ALIASES[split.lower()]
        except (KeyError, AttributeError):
            raise UsageError(f"unknown split {split!r}; use train, valid (or dev/val) or test") from None

    def _split_file_or_none(self, split: str) -> Path | None:
        for fname in _SPLIT_FILES[self.canonical_split(split)]:
            if (self.root / fname).is_file():
                return self.root / fname
        return None

    def split_file(self, split: str) -> Path:
        """Path of a split's CoNLL file; InputError when it is absent."""
        path = self._split_file_or_none(split)
        if path is None:
            names = " or ".join(_SPLIT_FILES[self.canonical_split(split)])
            raise InputError(f"{self.root}: no {self.canonical_split(split)} split ({names}); "
                             f"add it or choose among the present splits {self.splits()}")
        return path

    def splits(self) -> list[str]:
        """Canonical names of the splits whose file exists, in train, valid, test order."""
        return [s for s in SPLITS if self._split_file_or_none(s) is not None]

    def read(self, split: str, lenient: bool = False, fix_bio: bool = False) -> list[Tweet]:
        """Tweets of a split (see `pipeline.conll.read_conll`), each marked with this dataset's name."""
        tweets = read_conll(self.split_file(split), lenient=lenient, fix_bio=fix_bio)
        for tweet in tweets:
            tweet.dataset = self.name
        return tweets

    # ---- images and crops -------------------------------------------------------------------------------------
    def image_name(self, image_id: str) -> str:
        """File name of an image id: `<id>.jpg` unless the id already ends in an image extension."""
        return image_id if image_id.lower().endswith(_IMAGE_EXTS) else f"{image_id}.jpg"

    def image_path(self, image_id: str) -> Path | None:
        """The image file of an IMGID, or None when missing (UnsafePathError when the id escapes the image folder)."""
        if not image_id or not self.images_dir.is_dir():
            return None
        path = safe_resolve(self.images_dir, self.image_name(image_id))
        return path if path.is_file() else None

    def _dict(self, key: str, path: Path) -> dict[str, list[str]]:
        if key not in self._dicts:
            self._dicts[key] = load_crop_dict(path) if path.is_file() else {}
            if not path.is_file():
                log.debug("%s: absent; no crops from it", path)
        return self._dicts[key]

    def grounding_dict_path(self, split: str) -> Path:
        """`<name>_<train|val|test>_dict.pth` of a split."""
        return self.root / f"{self.name}_{_DICT_TAG[self.canonical_split(split)]}_dict.pth"

    def grounding_entries(self, split: str | None, image_id: str) -> list[tuple[str, Path]]:
        """The first max_crops grounding-crop entries listed for an image as (name, resolved path), present or not.

        `split=None` looks in every split's dictionary (train, valid, test). Raises UnsafePathError for an entry
        that escapes the crops folder.
        """
        splits = SPLITS if split is None else (self.canonical_split(split),)
        for s in splits:
            names = self._dict(f"grounding:{s}", self.grounding_dict_path(s)).get(self.image_name(image_id))
            if names is not None:
                crops_dir = self.aux_dir / _DICT_TAG[s] / "crops"
                return [(n, safe_resolve(crops_dir, n)) for n in names[:self.max_crops]]
        return []

    def grounding_crops(self, split: str | None, image_id: str) -> list[Path]:
        """Existing grounding crops of an image (at most max_crops, dictionary order); [] when none."""
        return [p for _, p in self.grounding_entries(split, image_id) if p.is_file()]

    def rcnn_entries(self, image_id: str) -> list[tuple[str, Path]]:
        """The first max_crops RCNN-crop entries of an image as (path as listed, resolved path), present or not.

        Listed paths are relative to the dataset folder; one missing there is looked up relative to data_dir
        (HVPNeT's convention). Raises UnsafePathError for an entry that escapes.
        """
        stem = image_id[: -len(Path(image_id).suffix)] if image_id.lower().endswith(_IMAGE_EXTS) else image_id
        rels = self._dict("rcnn", self.img2crop_path).get(stem, [])
        out = []
        for rel in rels[:self.max_crops]:
            path = safe_resolve(self.root, rel)
            if not path.is_file():
                try:
                    alt = safe_resolve(self.data_dir, rel)
                except UnsafePathError:
                    alt = None
                if alt is not None and alt.is_file():
                    path = alt
            out.append((rel, path))
        return out

    def rcnn_crops(self, image_id: str) -> list[Path]:
        """Existing RCNN crops of an image (at most max_crops, dictionary order); [] when none."""
        return [p for _, p in self.rcnn_entries(image_id) if p.is_file()]

    def __repr__(self) -> str:
        return f"BenchmarkDataset(root={str(self.root)!r}, splits={self.splits()})"
