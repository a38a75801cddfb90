"""Shared builders of the test suite: tiny models and configs, Pillow-drawn images and datasets, dumps, a Ray head.

Nothing binary is committed: every image, model, cache and dictionary is generated into a tmp folder. Fixtures that
wrap these live in conftest.py; test modules import only from here, never from each other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------------------------
# tiny models and configs
# ---------------------------------------------------------------------------------------------------------------
def invoke(*args: object, env: dict | None = None):
    """The typer app run in this process (no interpreter start-up, no inherited RAY_ADDRESS): a click Result with
    exit_code, stdout and stderr; exceptions other than the CLI's own exits propagate."""
    from typer.testing import CliRunner

    from cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env={"RAY_ADDRESS": "", **(env or {})})


def tiny_model_config(bert_dir: str):
    """A small ModelConfig over the tiny BERT, with a tiny visual layout (Dv 8, Lo 5, Lg 3, Lr 2, K 2); no BiLSTM,
    one softmax over all visual tokens and a free CRF, so each test turns on only what it checks."""
    from rpihmif.config import HIMConfig, IFFEConfig, ModelConfig, TextEncoderConfig, VisualConfig

    return ModelConfig(
        text=TextEncoderConfig(bert_name=bert_dir, max_seq=48, shape_dim=8, lstm_dim=0, dropout=0.0),
        him=HIMConfig(question="which entities ?", num_capsules=4, hidden=16, heads=2, source_attention=False),
        iffe=IFFEConfig(iterations=3),
        visual=VisualConfig(dim=8, orig_tokens=5, grounding_tokens=3, rcnn_tokens=2, max_crops=2),
        constrain_bio=False,
    )


NAMES = {"PER": ["john smith", "obama"], "LOC": ["london", "paris", "new york"], "ORG": ["google", "apple", "nba"]}
FILLER = ["rt", "the", "game", "today", "love", "is", "a"]


def write_split(path: Path, n: int, seed: int) -> None:
    """`n` tweets like 'rt love london today' with the entity labelled by its (unambiguous) name."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        etype = rng.choice(sorted(NAMES))
        name = rng.choice(NAMES[etype]).split()
        words = rng.sample(FILLER, 2) + name + rng.sample(FILLER, 2)
        labels = ["O", "O"] + [f"B-{etype}"] + [f"I-{etype}"] * (len(name) - 1) + ["O", "O"]
        lines.append(f"IMGID:{1000 + i}")
        lines += [f"{w}\t{lab.replace('MISC', 'OTHER')}" for w, lab in zip(words, labels)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_dataset(root: Path, n_train: int = 16, n_valid: int = 6) -> Path:
    """root/data/tiny with train.txt and valid.txt of generated tweets (a dataset folder for train runs)."""
    data = root / "data" / "tiny"
    data.mkdir(parents=True)
    write_split(data / "train.txt", n_train, seed=1)
    write_split(data / "valid.txt", n_valid, seed=2)
    return data


def tiny_overrides(tiny_bert_dir, data: Path, run: Path, **extra) -> list[str]:
    """`--set` overrides of a tiny, fast train run over the dataset folder `data` into `run`."""
    sets = {"data_dir": str(data.parent), "dataset": data.name, "bert_name": tiny_bert_dir, "save_path": str(run),
            "cache_dir": str(run.parent / "no-cache"), "max_seq": 32, "num_epochs": 3, "train_batch_size": 8,
            "learning_rate": 2e-3, "fusion_learning_rate": 5e-3, "crf_learning_rate": 5e-2, "warmup_ratio": 0.0,
            "device": "cpu", "him.hidden": 16, "him.num_capsules": 2, "him.heads": 2,
            # FGM's eps 1.0 is sized for the MiniLM's word embeddings (rows of L2 norm ~1.07); the tiny BERT's rows
            # are ~10x shorter, so it would swamp them. tests/test_adversarial.py trains with it on.
            "adversarial_eps": 0}
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


# ---------------------------------------------------------------------------------------------------------------
# vision: a tiny CLIP, drawn images, a DeepKE-layout dataset, fake caches
# ---------------------------------------------------------------------------------------------------------------
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=224, patch_size=32)


def make_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a tiny CLIPVisionModel (hidden 32, 2 layers, 2 heads, patch 32, 224 px) with save_pretrained."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(str(folder))
    return folder


def draw_image(path: Path, seed: int, size: tuple[int, int] = (96, 80), fmt: str | None = None) -> Path:
    """A small picture of coloured shapes, different for each seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0] - 10)), int(rng.integers(0, size[1] - 10))
        d.rectangle([x0, y0, x0 + int(rng.integers(5, 40)), y0 + int(rng.integers(5, 40))],
                    fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def fake_fingerprint(fid: str = "testfp0000000000", dim: int = 8, tokens=(5, 3, 2), k: int = 2) -> dict:
    """A fingerprint dict without a model, for cache-only tests."""
    return {"id": fid, "hashed": {"random_init": False, "weights_sha256": fid * 2, "image_size": 224, "aux_size": 128,
                                  "rcnn_size": 64, "dtype": "float16"},
            "info": {"encoder": f"test encoder {fid}", "spec": {"dim": dim, "orig_tokens": tokens[0],
                                                                "grounding_tokens": tokens[1],
                                                                "rcnn_tokens": tokens[2], "max_crops": k}}}


def fake_rows(keys: list[str], dim: int = 8, tokens=(5, 3, 2), k: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = len(keys)
    return {"key": np.array(keys), "orig": rng.standard_normal((n, tokens[0], dim)).astype(np.float32),
            "orig_mask": np.ones(n, bool), "grounding": rng.standard_normal((n, k, tokens[1], dim)).astype(np.float32),
            "grounding_mask": np.tile(np.array([True] + [False] * (k - 1)), (n, 1)),
            "rcnn": rng.standard_normal((n, k, tokens[2], dim)).astype(np.float32),
            "rcnn_mask": np.zeros((n, k), bool)}


def make_dataset(data_dir: Path, n_images: int = 6, name: str = "twitter2015", copies: int = 0,
                 bad: dict[str, bytes] | None = None) -> Path:
    """A tiny DeepKE-layout dataset: train/test splits, images, grounding crops (+dict), RCNN crops (+img2crop).

    `copies`: extra image ids whose file is a byte copy of image 0 (a retweet). `bad`: id -> raw bytes of a bad image.
    Image "missing" is listed in test.txt but has no file.
    """
    import torch

    root = data_dir / name
    images = root / f"{name}_images"
    detect = root / "twitter15_detect"
    ids = [f"{100 + i}" for i in range(n_images)]
    half = (n_images + copies + len(bad or {})) // 2
    gdicts: dict[str, dict] = {"train": {}, "test": {}}
    rdict = {}
    for i, iid in enumerate(ids):
        split = "train" if i < half else "test"
        crops = root / f"{name}_aux_images" / split / "crops"
        draw_image(images / f"{iid}.jpg", seed=i, fmt="PNG" if i % 2 else "JPEG")
        names = [f"{iid}_pred_yolo_crop_{c}.png" for c in range(i % 4)]  # 0..3 crops
        for c, n in enumerate(names):
            draw_image(crops / n, seed=1000 + 10 * i + c, size=(40, 50), fmt="PNG")
        gdicts[split][f"{iid}.jpg"] = names + ([f"{iid}_gone.png"] if i == 1 else [])  # one listed crop is missing
        rnames = [f"twitter15_detect/crops/{iid}_{c}.jpg" for c in range((i + 1) % 3)]
        for c, n in enumerate(rnames):
            draw_image(root / n, seed=2000 + 10 * i + c, size=(30, 30), fmt="JPEG")
        rdict[iid] = rnames
    extra = []
    for c in range(copies):
        cid = f"9{c:02d}"
        (images / f"{cid}.jpg").write_bytes((images / f"{ids[0]}.jpg").read_bytes())
        extra.append(cid)
    for bid, data in (bad or {}).items():
        (images / f"{bid}.jpg").write_bytes(data)
        extra.append(bid)
    detect.mkdir(parents=True, exist_ok=True)
    for split, gdict in gdicts.items():
        torch.save(gdict, root / f"{name}_{split}_dict.pth")
    torch.save(rdict, detect / "twitter15_img2crop.pth")

    def split(tids):
        return "".join(f"IMGID:{t}\nRT\tO\n@user\tO\nParis\tB-LOC\n\n" for t in tids)

    all_ids = ids + extra
    (root / "train.txt").write_text(split(all_ids[:half]), encoding="utf-8")
    (root / "test.txt").write_text(split(all_ids[half:] + ["missing"]), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------------------------
# image bytes
# ---------------------------------------------------------------------------------------------------------------
def png_bytes(width: int, height: int, idat: bytes | None = None, color: int = 2) -> bytes:
    """A PNG of 8-bit `color` type (2 RGB, 0 grey) whose IHDR claims width x height, with `idat` as its compressed
    pixel data (None = no IDAT chunk): hand-made headers for decompression-bomb tests."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    pixels = chunk(b"IDAT", idat) if idat is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
            + pixels + chunk(b"IEND", b""))


def png_header(width: int, height: int, pixels: bool = False) -> bytes:
    """A PNG whose IHDR claims width x height (the header alone is the bomb); `pixels` adds one tiny IDAT."""
    return png_bytes(width, height, zlib.compress(b"\x00" * 16) if pixels else None)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    """`img` saved as `fmt` into bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# tag-corpus: a trained tiny checkpoint, a feature cache of dump images, dumps
# ---------------------------------------------------------------------------------------------------------------
FINGERPRINT_ID = "fp-tagtest"
PER, LOC, ORG = ["john smith", "obama"], ["london", "new york"], ["google", "apple", "nba"]
# "paris" is a person in half of the training tweets and a place in the other half: an ambiguous token
TEMPLATES = ["rt {} is at the game today", "love {} and the nba", "{} in {} today", "the game of {} is new"]


def _tweet(rng: random.Random) -> tuple[list[str], list[str]]:
    kinds = [("PER", rng.choice(PER + ["paris"])), ("LOC", rng.choice(LOC + ["paris"])), ("ORG", rng.choice(ORG))]
    words, labels = [], []
    template = rng.choice(TEMPLATES)
    slots = iter(rng.sample(kinds, 2))
    for part in template.split():
        if part == "{}":
            etype, name = next(slots)
            for j, w in enumerate(name.split()):
                words.append(w)
                labels.append(("B-" if j == 0 else "I-") + etype)
        else:
            words.append(part)
            labels.append("B-ORG" if part == "nba" else "O")
    return words, labels


def train_tiny_checkpoint(model_config, folder: Path, steps: int = 150, seed: int = 0,
                          fingerprint_id: str = FINGERPRINT_ID) -> Path:
    """Train the tiny model on templated tweets for `steps` AdamW steps and save it with a cache fingerprint."""
    import torch

    from rpihmif.alignment import WindowTokenizer
    from rpihmif.checkpoint import save_checkpoint
    from rpihmif.labels import LABEL2ID
    from rpihmif.model import build_model

    cfg = dataclasses.replace(model_config, visual=dataclasses.replace(model_config.visual,
                                                                         fingerprint=fingerprint_id))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and the 2 cores are shared
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tokenizer = build_model(cfg)
    enc = WindowTokenizer.for_model(tokenizer, cfg)
    opt = torch.optim.AdamW(model.param_groups(3e-3, 3e-3, 3e-2, 0.0))
    model.train()
    for _ in range(steps):
        tweets = [_tweet(rng) for _ in range(16)]
        batch = enc.collate([enc.encode_train(w)[0] for w, _ in tweets],
                            labels=[[LABEL2ID[x] for x in labels] for _, labels in tweets])
        loss = model(batch, None).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    return save_checkpoint(folder, model, tokenizer)


def fingerprint(spec) -> dict:
    return {"id": FINGERPRINT_ID, "hashed": {"encoder": "random test features", "dtype": "float16"},
            "info": {"encoder": "random test features", "spec": dataclasses.asdict(spec)}}


def draw_images(folder: Path, n: int) -> list[str]:
    """n small JPEGs (with two PNG crops each) under folder/img; returns the image paths relative to folder."""
    from PIL import Image, ImageDraw

    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = Image.new("RGB", (96, 64), (40 + 30 * i % 200, 90, 160))
        ImageDraw.Draw(img).ellipse((20, 10, 60, 50), fill=(230, 200, 40))
        img.save(folder / f"img/{i}.jpg")
        for c in range(2):
            img.crop((c * 30, 0, c * 30 + 40, 40)).save(folder / f"img/{i}_crop{c}.png")
        names.append(f"img/{i}.jpg")
    return names


def make_feature_cache(cache_dir: Path, spec, image_ids: list[str], seed: int = 0) -> None:
    """Random features for each dump image id, aliased as ("dump", id) in a cache of FINGERPRINT_ID."""
    from cache import CacheWriter

    rng = np.random.default_rng(seed)
    n, k = len(image_ids), spec.max_crops
    with CacheWriter(cache_dir, fingerprint(spec), shard_size=64) as writer:
        writer.add_rows({
            "key": [f"k{i:04d}" for i in range(n)],
            "orig": rng.normal(size=(n, spec.orig_tokens, spec.dim)), "orig_mask": np.ones(n, bool),
            "grounding": rng.normal(size=(n, k, spec.grounding_tokens, spec.dim)), "grounding_mask": np.ones((n, k), bool),
            "rcnn": rng.normal(size=(n, k, spec.rcnn_tokens, spec.dim)), "rcnn_mask": np.ones((n, k), bool),
        })
        for i, image_id in enumerate(image_ids):
            writer.add_alias("dump", image_id, f"k{i:04d}")


TEXTS = ["RT @fan: john smith is at the game today in london 👍🏽 http://t.co/x1",
         "love google and the nba ❤️ #gameday", "obama in new york today… 👨‍👩‍👧",
         "the game of paris is new: Zoë’s café 日本 😂😂", "apple in london today!!!"]


def tweets(n: int, images: list[str] | None = None, seed: int = 0) -> list[dict]:
    """n dump records cycling TEXTS; record i gets images[i % len] when images are given (some uncached)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rec = {"id": f"t{i}", "text": TEXTS[i % len(TEXTS)] + (" x" * rng.randint(0, 3))}
        if images:
            img = images[i % len(images)]
            rec.update(image=img, crops=[img.replace(".jpg", "_crop0.png"), img.replace(".jpg", "_crop1.png")])
        out.append(rec)
    return out


def write_dump(path: Path, records: list, extra_lines: list[bytes] = ()) -> Path:
    """A JSONL dump (gzip when the name ends in .gz): a dict is one JSON line, a str or bytes item one raw line."""
    def raw(r) -> bytes:
        return r if isinstance(r, bytes) else r.encode() if isinstance(r, str) else json.dumps(r, ensure_ascii=False).encode()
    data = b"".join(raw(r) + b"\n" for r in list(records) + list(extra_lines))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path



TAG_BAD_LINES = [b'{"id": "b1", "text": "cut', b'{"id": "b2"}', b'{"id": "b3", "text": "bad \xff"}',
                 b'{"id": "b4", "text": " "}', b'{"id": "b5", "text": "' + b"y" * 3000 + b'"}']
TAG_RUNNER = ("import json,sys; from pipeline.tag.stage import run_tag; from pipeline.stage_config import TagConfig; "
              "run_tag([sys.argv[1]], TagConfig.from_dict(json.loads(sys.argv[2])))")  # argv: dump, config json


def tag_config(env: dict, out: Path, **extra):
    """The tag config of the `tag_env` fixture's checkpoint and cache: small batches, 16-record chunks."""
    from pipeline.stage_config import stage_config

    sets = {"load_path": str(env["ckpt"]), "out": str(out), "cache_dir": str(env["cache"]), "batch_size": 8,
            "bucket_size": 32, "row_group_bytes": 4000, "chunk_records": 16, "max_record_bytes": 2000, "threads": 1,
            **extra}
    return stage_config("tag", overrides=[f"{k}={v}" for k, v in sets.items()])


def tag_dump(env: dict, name: str, n: int, bad=()) -> Path:
    """`n` tweets over the env's images (+ `bad` raw lines) as a dump in its dumps folder."""
    return write_dump(env["root"] / "dumps" / name, tweets(n, env["images"]), list(bad))


def tag_rows(out: Path):
    """The rows of a tag-corpus output, sorted by id, without `tagged_at` (which differs between runs by design)."""
    import pandas as pd

    from pipeline.tag.manifest import data_folder

    df = pd.read_parquet(data_folder(out)).sort_values(["id"]).reset_index(drop=True)
    return df.drop(columns=["tagged_at"])


def same_tag_rows(a, b) -> None:
    """Equal rows; scores and routing compared to 1e-5 (another process may sum floats in another order)."""
    import pytest

    assert a.drop(columns=["entities"]).equals(b.drop(columns=["entities"]))
    for ea, eb in zip(a["entities"], b["entities"]):
        assert len(ea) == len(eb)
        for x, y in zip(ea, eb):
            for key in x:
                if isinstance(x[key], float):
                    assert y[key] == pytest.approx(x[key], abs=1e-5), key
                else:
                    assert x[key] == y[key], key

# ---------------------------------------------------------------------------------------------------------------
# a real Ray head on loopback
# ---------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, timeout: float = 120) -> Iterator[str]:
    """`ray start --head --block` on a free loopback port with its own short temp dir; yields "127.0.0.1:PORT" once
    the port accepts connections, and stops only the processes of this head (its session) afterwards."""
    port = free_port()
    temp = Path(f"/tmp/rh{os.getpid()}-{port}")  # short: Ray's unix sockets live under it
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"}
    out = tempfile.TemporaryFile()
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                             f"--port={port}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if head.poll() is not None or time.monotonic() > deadline:
                out.seek(0)
                raise AssertionError(f"ray head did not start: {out.read().decode()[-2000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` shuts its own processes down
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        out.close()
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# a multimodal checkpoint whose config.json records a real (tiny, random-init) vision encoder
# ---------------------------------------------------------------------------------------------------------------
TINY_VISION = dict(vit_name="", random_vit_layers=1, random_vit_hidden=8, seed=3, image_size=64, aux_size=32,
                   rcnn_size=32, max_crops=2, dtype="float16")  # spec: Dv 8, Lo 5, Lg 2, Lr 2, K 2


def vision_checkpoint(folder: Path, bert_dir: str, steps: int = 40) -> Path:
    """A tiny trained checkpoint over the TINY_VISION random-init encoder: its fingerprint id and `visual.encoder`
    record are the real ones, so extract-features with that vision section writes the cache it reads."""
    from rpihmif.config import VisualConfig
    from rpihmif.vision_encoder import VisionSettings, vision_record
    from rpihmif.vision_features import ImageFeaturizer

    settings = VisionSettings(**TINY_VISION)
    fp = ImageFeaturizer(settings).fingerprint
    spec = fp["info"]["spec"]
    cfg = tiny_model_config(bert_dir)
    cfg = dataclasses.replace(cfg, visual=VisualConfig(dim=spec["dim"], orig_tokens=spec["orig_tokens"],
                                                       grounding_tokens=spec["grounding_tokens"],
                                                       rcnn_tokens=spec["rcnn_tokens"], max_crops=spec["max_crops"],
                                                       encoder=vision_record(settings)))
    train_tiny_checkpoint(cfg, folder, steps=steps, fingerprint_id=fp["id"])
    return folder


def null_tag(inputs, out: Path, chunk: int = 10, **extra) -> dict:
    """run_tag over `inputs` with the null model (no checkpoint): chunks of `chunk` lines, `extra` as --set keys."""
    from pipeline.stage_config import stage_config
    from pipeline.tag.plan import ModelSpec
    from pipeline.tag.stage import run_tag
    from rpihmif.labels import LABELS

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    from tag_scale import NullTagger  # instant inference with no entities: the stage's own work is what is tested

    sets = {"out": str(out), "chunk_records": chunk, "device": "cpu", "progress_every_s": 1000, **extra}
    conf = stage_config("tag", overrides=[f"{k}={v}" for k, v in sets.items()])
    return run_tag(list(inputs), conf, ModelSpec("null-model", "", False, "", list(LABELS), factory=NullTagger))


def records(prefix: str, n: int) -> list[dict]:
    """`n` good dump records with ids prefix0..prefix{n-1}."""
    return [{"id": f"{prefix}{i}", "text": f"{TEXTS[i % len(TEXTS)]} {i}"} for i in range(n)]


def files_outside(root: Path, out: Path) -> dict:
    """(size, mtime_ns) of every file under `root` but outside `out`: what a run must never touch."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and not p.resolve().is_relative_to(out.resolve())}


def assert_live_rows(out: Path, ids: list[str]) -> None:
    """Nothing lost or duplicated: the data folder holds exactly `ids`, each once (every reader sees the same)."""
    import pyarrow.dataset as ds

    from pipeline.tag.manifest import data_folder

    got = ds.dataset(data_folder(out), format="parquet", partitioning="hive").to_table(columns=["id"])
    got = got.column("id").to_pylist()
    assert sorted(got) == sorted(ids) and len(set(got)) == len(got)
