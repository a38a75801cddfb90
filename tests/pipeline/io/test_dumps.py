"""Dump reader: every kind of bad JSONL record becomes a reject with its reason; good records all come through."""
from __future__ import annotations

import gzip
import json

import pytest

from exit_codes import InputError
from pipeline.io.dumps import DumpFields, DumpRecord, Reject, expand_inputs, iter_dump

GOOD = [{"id": f"g{i}", "text": f"good tweet {i} about Paris 👍🏽", "image": f"img/{i}.jpg"} for i in range(5)]
# (raw line bytes, expected reason fragment)
BAD = [
    (b'{"id": "b1", "text": "unterminated', "bad JSON"),
    (b'{"text": "no id here"}', "missing id field"),
    (b'{"id": "b3"}', "missing text field"),
    (b'{"id": "b4", "text": 42}', "text field 'text' must be a string"),
    (b'{"id": 4.5, "text": "float id"}', "must be a string or integer"),
    (b'{"id": "b6", "text": "bad \xff\xfe bytes"}', "invalid UTF-8"),
    (b'{"id": "b7", "text": "   "}', "empty text"),
    (b'{"id": "b8", "text": "lone \\ud800 surrogate"}', "unpaired surrogate"),
    (b'["a", "list"]', "expected a JSON object"),
    (b'{"id": "b10", "text": "ok", "image": 5}', "image field"),
    (b'{"id": "b11", "text": "ok", "crops": [1, 2]}', "must be a list of path strings"),
    (b'{"id": "b12", "text": "' + b"x" * 2000 + b'"}', "longer than max_record_bytes"),
]


def _lines() -> list[bytes]:
    out = []
    for i, bad in enumerate(BAD):
        out.append(json.dumps(GOOD[i % len(GOOD)] | {"id": f"g{i}"}, ensure_ascii=False).encode())
        out.append(bad[0])
    out.append(b"")  # a blank line is skipped, not rejected
    out.append(json.dumps({"id": 7, "text": "int id, null image", "image": None}).encode())
    return out


def _split(items):
    items = list(items)
    return [r for r in items if isinstance(r, DumpRecord)], [r for r in items if isinstance(r, Reject)]


@pytest.mark.parametrize("gz", [False, True])
def test_every_reject_kind_and_all_good_records(tmp_path, gz):
    path = tmp_path / ("d.jsonl.gz" if gz else "d.jsonl")
    data = b"\n".join(_lines()) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    good, rejects = _split(iter_dump(path, DumpFields(), max_record_bytes=1000))
    assert [r.id for r in good] == [f"g{i}" for i in range(len(BAD))] + ["7"]
    assert good[-1].image is None and good[0].image == "img/0.jpg"
    assert len(rejects) == len(BAD)
    for rej, (_, reason) in zip(rejects, BAD):
        assert reason in rej.reason, (rej, reason)
        assert rej.file == str(path)
    # line numbers are 1-based file lines: bad record i sits on line 2*i+2
    assert [r.line for r in rejects] == [2 * i + 2 for i in range(len(BAD))]
    assert good[0].line == 1


def test_truncated_gzip_keeps_records_before_the_cut(tmp_path):
    lines = [json.dumps({"id": str(i), "text": f"tweet number {i} " * 5}) for i in range(2000)]
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    good, rejects = _split(iter_dump(path))
    assert 0 < len(good) < 2000
    assert [r.id for r in good] == [str(i) for i in range(len(good))]
    assert len(rejects) == 1 and "ends early" in rejects[0].reason


def test_custom_field_names_and_crops(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"tid": "1", "body": "hi", "pic": "a.jpg", "g": ["c1.png"], "r": "r1.png"}) + "\n")
    fields = DumpFields(id_field="tid", text_field="body", image_field="pic", crops_field="g", rcnn_field="r")
    (rec,) = list(iter_dump(path, fields))
    assert (rec.id, rec.text, rec.image, rec.crops, rec.rcnn) == ("1", "hi", "a.jpg", ["c1.png"], ["r1.png"])


def test_empty_and_non_gzip_dumps(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert list(iter_dump(empty)) == []
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_text('{"id": "1", "text": "plain text named .gz"}\n')
    (rej,) = list(iter_dump(fake))
    assert isinstance(rej, Reject) and "gzip" in rej.reason


def test_exact_limit_and_no_trailing_newline(tmp_path):
    rec, rec2 = (json.dumps({"id": i, "text": "y" * 50}).encode() for i in ("1", "2"))  # same length
    path = tmp_path / "x.jsonl"
    path.write_bytes(rec + b"\n" + rec2)
    good, rejects = _split(iter_dump(path, max_record_bytes=len(rec)))
    assert len(good) == 2 and not rejects
    good, rejects = _split(iter_dump(path, max_record_bytes=len(rec) - 1))
    assert not good and len(rejects) == 2


def test_expand_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.jsonl.gz", "sub/c.jsonl", "notes.txt", ".hidden.jsonl"):
        (tmp_path / name).write_text("")
    found = expand_inputs([tmp_path, tmp_path / "b.jsonl"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jsonl.gz", "b.jsonl", "sub/c.jsonl"]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "missing.jsonl"])
