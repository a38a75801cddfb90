"""Cost of the feature cache's checksums (HDF5 fletcher32 per chunk): extract, read, verify and a cached epoch; JSON.

One run, same sample and encoder: caches written with and without fletcher32 (alternating, fresh folders), then the
same reads over each; `write_all_features_s` times the writer alone (no encoder), where the checksum is computed.
Real ViT-B/32 feature sizes (hidden 768) from a random-init ViT with few layers to keep it short.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _extract(data: Path, cache: Path, layers: int, checksums: bool) -> dict:
    from cache.writer import CacheWriter
    from pipeline.extract.stage import run_extract
    from pipeline.stage_config import stage_config

    CacheWriter.checksums = checksums
    try:
        cfg = stage_config("extract", overrides=[f"data_dir={data}", "dataset=twitter2015", f"cache_dir={cache}",
                                                 f"random_vit_layers={layers}", "workers=0", "device=cpu"])
        return run_extract(cfg, dumps=[])
    finally:
        CacheWriter.checksums = True


def _folder(cache: Path) -> Path:
    from cache.reader import fingerprint_folders

    (folder,) = fingerprint_folders(cache)
    return folder


def _read_all(folder: Path) -> tuple[float, int]:
    """Seconds to read every key's features once through the reader (each chunk checked when it has a checksum)."""
    from cache.reader import FeatureCache

    cache = FeatureCache(folder)
    start, n = time.perf_counter(), 0
    for key in cache.keys():
        n += sum(a.nbytes for a in cache.get(key).values())
    seconds = time.perf_counter() - start
    cache.close()
    return seconds, n


def _write_all(folder: Path, checksums: bool) -> float:
    """Seconds to write every feature of `folder` again into a fresh cache (the writer alone, no encoder)."""
    from cache.format import read_fingerprint
    from cache import FEATURE_NAMES, CacheWriter, FeatureCache

    source = FeatureCache(folder)
    keys = source.keys()
    rows = {name: np.stack([source.get(k)[name] for k in keys]) for name in FEATURE_NAMES}
    source.close()
    CacheWriter.checksums = checksums
    try:
        with tempfile.TemporaryDirectory(prefix="checksum_write_") as tmp:
            start = time.perf_counter()
            with CacheWriter(tmp, read_fingerprint(folder), shard_size=512) as writer:
                for s in range(0, len(keys), 32):  # extract's batch size
                    writer.add_rows({"key": np.array(keys[s:s + 32]), **{n: v[s:s + 32] for n, v in rows.items()}})
                    writer.maybe_commit()
            return time.perf_counter() - start
    finally:
        CacheWriter.checksums = True


def _verify(folder: Path) -> float:
    from cache.format import read_fingerprint
    from cache.integrity import repair_folder

    start = time.perf_counter()
    result = repair_folder(folder, read_fingerprint(folder), full=True)
    assert not result["damaged"]
    return time.perf_counter() - start


def _epoch(data: Path, cache: Path, bert: str) -> dict:
    from pipeline.stage_config import stage_config
    from pipeline.train.trainer import Trainer

    cfg = stage_config("train", overrides=[f"data_dir={data}", "dataset=twitter2015", f"cache_dir={cache}",
                                          f"save_path={cache.parent / 'run'}", "device=cpu", f"bert_name={bert}"])
    trainer = Trainer(cfg)
    start = time.perf_counter()
    loss = trainer._train_epoch()
    return {"seconds": time.perf_counter() - start, "tweets": len(trainer.encoded), "loss": loss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=2, help="random-init ViT layers (hidden 768, patch 32, 224 px)")
    ap.add_argument("--repeat", type=int, default=2, help="extract runs and epochs per mode (alternating order)")
    ap.add_argument("--bert-name", default="", help="text encoder of the epoch; '' = packaged MiniLM-L6")
    args = ap.parse_args()
    import torch

    from pipeline.io.sample import make_sample

    with tempfile.TemporaryDirectory(prefix="checksum_cost_") as tmp:
        data = Path(tmp) / "data"
        sample = make_sample(data, seed=0)
        modes = {"fletcher32": True, "none": False}
        runs: dict[str, dict[str, list]] = {m: {"extract_ips": [], "write_s": [], "read_s": [], "verify_s": [],
                                                "epoch_s": []} for m in modes}
        caches: dict[str, Path] = {}
        for r in range(args.repeat):
            for mode in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                cache = Path(tmp) / f"cache-{mode}-{r}"
                summary = _extract(data, cache, args.layers, modes[mode])
                runs[mode]["extract_ips"].append(summary["images_per_s"])
                caches[mode] = cache
        nbytes = {}
        for r in range(3):
            for mode in modes:
                seconds, nbytes[mode] = _read_all(_folder(caches[mode]))
                runs[mode]["read_s"].append(seconds)
                runs[mode]["verify_s"].append(_verify(_folder(caches[mode])))
                runs[mode]["write_s"].append(_write_all(_folder(caches[mode]), modes[mode]))
        for r in range(args.repeat):
            for mode in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                epoch = _epoch(data, caches[mode], args.bert_name)
                runs[mode]["epoch_s"].append(epoch["seconds"])
        disk = {m: sum(p.stat().st_size for p in _folder(c).glob("shard-*.h5")) for m, c in caches.items()}

    def med(mode: str, name: str) -> float:
        return statistics.median(runs[mode][name])

    result = {"sample": {"tweets": sample["tweets"], "images": summary["images"],
                         "unique_images": summary["unique_images"]},
              "encoder": f"random-init ViT-B/32 shape, {args.layers} layers, hidden 768, float16 features",
              "text_encoder": args.bert_name or "packaged MiniLM-L6", "device": "cpu",
              "torch_threads": torch.get_num_threads(), "epoch_tweets": epoch["tweets"],
              "feature_mib": round(nbytes["none"] / 2**20, 1)}
    for mode in modes:
        result[mode] = {"extract_images_per_s": round(med(mode, "extract_ips"), 2),
                        "write_all_features_s": round(min(runs[mode]["write_s"]), 3),
                        "read_all_features_s": round(min(runs[mode]["read_s"]), 3),
                        "read_mib_per_s": round(nbytes[mode] / 2**20 / min(runs[mode]["read_s"]), 1),
                        "verify_all_shards_s": round(min(runs[mode]["verify_s"]), 3),
                        "cached_epoch_s": round(med(mode, "epoch_s"), 2),
                        "shards_mib_on_disk": round(disk[mode] / 2**20, 2),
                        "runs": {k: [round(x, 3) for x in v] for k, v in runs[mode].items()}}
    on, off = result["fletcher32"], result["none"]
    result["ratio_with_over_without"] = {
        "extract_images_per_s": round(on["extract_images_per_s"] / off["extract_images_per_s"], 3),
        "write_all_features_s": round(on["write_all_features_s"] / off["write_all_features_s"], 3),
        "read_all_features_s": round(on["read_all_features_s"] / off["read_all_features_s"], 3),
        "verify_all_shards_s": round(on["verify_all_shards_s"] / off["verify_all_shards_s"], 3),
        "cached_epoch_s": round(on["cached_epoch_s"] / off["cached_epoch_s"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
