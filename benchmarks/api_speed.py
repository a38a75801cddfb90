"""The notebook API against tag-corpus in-process on the same tweets: identical spans and types, the largest score
and routing difference, and throughput at the same batch size and precision (text-only, and with images); prints JSON.

Run: `.venv/bin/python benchmarks/api_speed.py --model CKPT [--n 500] [--images 100]`. Tweets are the first N of
Twitter-2017 valid (tokens joined by spaces as raw text); with images, tweet i gets drawn image i % IMAGES and its two
crops, cached by extract-features with the checkpoint's own vision section (`--model`) for tag-corpus, and featurized
in-process by the API.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

VALID = Path("/work/shared/data/twitter2017/valid.txt")  # the real Twitter-2017 valid text


def texts(n: int) -> list[str]:
    from pipeline.io.conll import read_conll

    return [" ".join(t.words) for t in read_conll(VALID, lenient=True)][:n]


def compare(api: list[dict], rows) -> dict:
    """Span/type mismatches and the largest score / routing difference over all entities."""
    mismatched, worst = 0, {"score": 0.0, "routing": 0.0}
    for got, (_, want) in zip(api, rows.iterrows()):
        ents = list(want["entities"])
        key = lambda e: (e["start_char"], e["end_char"], e["type"])  # noqa: E731
        if [key(e) for e in got["entities"]] != [key(e) for e in ents] or got["image_used"] != want["image_used"]:
            mismatched += 1
            continue
        for a, b in zip(got["entities"], ents):
            worst["score"] = max(worst["score"], abs(a["score"] - b["score"]))
            for k in ("routing_orig", "routing_grounding", "routing_rcnn"):
                if (a[k] is None) != (b[k] is None):
                    mismatched += 1
                elif a[k] is not None:
                    worst["routing"] = max(worst["routing"], abs(a[k] - b[k]))
    return {"tweets_mismatched": mismatched, "entities": int(sum(len(r["entities"]) for r in api)),
            "max_abs_score_diff": worst["score"], "max_abs_routing_diff": worst["routing"]}


def tag_corpus(dump: Path, out: Path, model: str, cache: Path, args) -> tuple[object, float]:
    import helpers
    from pipeline.stage_config import stage_config
    from pipeline.tag.stage import run_tag

    sets = {"load_path": model, "out": out, "cache_dir": cache, "batch_size": args.batch_size, "threads": args.threads,
            "precision": args.precision, "device": "cpu", "workers": 0, "chunk_records": 100_000}
    t0 = time.perf_counter()
    run_tag([dump], stage_config("tag", overrides=[f"{k}={v}" for k, v in sets.items()]))
    seconds = time.perf_counter() - t0
    rows = helpers.tag_rows(out)
    rows["n"] = rows["id"].str[1:].astype(int)
    return rows.sort_values("n").reset_index(drop=True), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()
    import torch

    import helpers
    import rpihmif
    from pipeline.extract.from_checkpoint import vision_overrides
    from pipeline.extract.stage import run_extract
    from pipeline.stage_config import stage_config

    torch.set_num_threads(args.threads)
    tweets = texts(args.n)
    work = Path(tempfile.mkdtemp(prefix="api_speed_"))
    result: dict = {"model": args.model, "tweets": len(tweets), "batch_size": args.batch_size,
                    "precision": args.precision, "threads": args.threads, "cpu": "2 cores shared with other sessions"}
    t0 = time.perf_counter()
    tagger = rpihmif.load(args.model, device="cpu", precision=args.precision)
    result["api_load_s"] = time.perf_counter() - t0
    # text only
    dump = helpers.write_dump(work / "text.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(tweets)])
    rows, tag_s = tag_corpus(dump, work / "out_text", args.model, work / "nocache", args)
    tagger(tweets[:8], batch_size=args.batch_size)  # warm-up, as tag-corpus's worker does
    t0 = time.perf_counter()
    api = tagger(tweets, batch_size=args.batch_size)
    api_s = time.perf_counter() - t0
    result["text_only"] = {**compare(api, rows), "tag_corpus_tweets_per_s": len(tweets) / tag_s,
                           "api_tweets_per_s": len(tweets) / api_s}
    if args.images:
        names = helpers.draw_images(work / "dumps", args.images)
        recs = []
        for i, t in enumerate(tweets):
            img = names[i % len(names)]
            recs.append({"id": f"t{i}", "text": t, "image": img,
                         "crops": [img.replace(".jpg", f"_crop{c}.png") for c in range(2)]})
        dump = helpers.write_dump(work / "dumps" / "img.jsonl", recs)
        t0 = time.perf_counter()
        run_extract(stage_config("extract", overrides=[f"cache_dir={work / 'cache'}", "dataset=", "workers=0",
                                                       f"precision={args.precision}", *vision_overrides(args.model)]),
                    dumps=[dump])
        extract_s = time.perf_counter() - t0
        rows, tag_s = tag_corpus(dump, work / "out_img", args.model, work / "cache", args)
        root = work / "dumps"
        inputs = [{"image": str(root / r["image"]), "crops": [str(root / c) for c in r["crops"]]} for r in recs]
        tagger(tweets[:4], images=inputs[:4])  # loads the vision encoder once
        t0 = time.perf_counter()
        api = tagger(tweets, images=inputs, batch_size=args.batch_size)
        api_s = time.perf_counter() - t0
        result["with_images"] = {**compare(api, rows), "images_used": int(rows["image_used"].sum()),
                                 "distinct_images": args.images, "extract_s": extract_s,
                                 "tag_corpus_tweets_per_s": len(tweets) / tag_s,
                                 "api_tweets_per_s_incl_clip": len(tweets) / api_s}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
