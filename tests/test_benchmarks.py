"""Benchmark adapters on fixtures in the public formats: NExT-QA, STAR, AGQA; missing videos, unsafe ids, bad files,
object stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark_fixtures import DATA, INPUTS, VIDEOS, write_videos
from step_ray.eval.benchmarks import BenchmarkFormatError, agqa, load_benchmark, nextqa, star
from step_ray.utils.inputs import InputError


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark_videos")
    return {name: write_videos(name, root / name) for name in VIDEOS}


def by_id(questions):
    return {q.id: q for q in questions}


def test_nextqa_fixture(videos):
    qs = load_benchmark("nextqa", str(INPUTS["nextqa"]), str(videos["nextqa"]))
    assert len(qs) == 12  # one record per row, in file order, answered or not
    assert [q.id for q in qs][:3] == ["1000000001_0", "1000000001_1", "1000000001_2"]
    q = by_id(qs)
    first = q["1000000001_0"]
    assert first.benchmark == "nextqa" and first.split == "val" and not first.open_answer
    assert first.options == ("to hide", "it was pushed", "to reach the edge", "it fell", "to rest")
    assert (first.answer_index, first.answer) == (2, "to reach the edge")
    assert first.video_uri == str(videos["nextqa"] / "0001" / "1000000001.mp4")
    assert (first.start, first.end, first.steps) == (None, None, None)  # whole video, no step counts
    assert first.fields == {"video": "1000000001", "qid": 0, "type": "CW", "frame_count": 120, "width": 64,
                            "height": 48}
    # eval_mc.py's groups: TP is scored with TN; C / T / D from the code's first letter
    assert q["1000000001_3"].fields["type"] == "TP" and q["1000000001_3"].groups == {"type": ("TN",),
                                                                                    "family": ("T",)}
    assert {x.groups["type"][0] for x in qs} == {"CW", "CH", "TN", "TC", "DC", "DL", "DO"}
    assert q["1000000003_1"].question == "why is the background dark, not bright"  # a quoted CSV field
    assert q["1000000004_0"].skip_reason.startswith("video_missing: ") and q["1000000004_0"].video_uri is None
    assert q["1000000005_0"].skip_reason.startswith("video_not_in_map: 1000000005")
    assert sum(x.askable for x in qs) == 10
    row = first.as_row()
    assert row["options"] == list(first.options) and row["family"] == "CW" and row["video_uri"] == first.video_uri


def test_adapter_output_feeds_the_frame_reader(videos):
    """A record gives a scorer what it needs: the frames of its span, decoded from its URI."""
    from step_ray.video.frames import read_frames

    q = by_id(load_benchmark("star", str(INPUTS["star"]), str(videos["star"])))["Interaction_T1_13"]
    frames = read_frames(q.video_uri, q.start, q.end, 4, 32)
    assert frames.shape == (4, 32, 32, 3)


def test_nextqa_map_option_and_errors(videos, tmp_path):
    folder = tmp_path / "nextqa"
    folder.mkdir()
    shutil.copy(INPUTS["nextqa"], folder / "val.csv")
    with pytest.raises(BenchmarkFormatError, match="map_vid_vidorID.json: no such file"):
        nextqa.load(str(folder / "val.csv"), str(videos["nextqa"]))
    qs = nextqa.load(str(folder / "val.csv"), str(videos["nextqa"]),
                     map_uri=str(DATA / "nextqa" / "map_vid_vidorID.json"))
    assert sum(q.askable for q in qs) == 10

    header = ",".join(nextqa.COLUMNS)
    good = "1,10,64,48,what,0,0,CW,a,b,c,d,e"
    cases = {
        "video,question,answer\n1,what,0\n": "no column frame_count",
        f"{header}\n{good.replace(',CW,', ',XX,')}\n": "line 2: type 'XX' is not a NExT-QA type code",
        f"{header}\n{good.replace(',0,0,CW', ',7,0,CW')}\n": "line 2: answer 7 is not an option index",
        f"{header}\n{good.replace(',10,', ',ten,')}\n": "line 2: frame_count 'ten' is not an integer",
        f"{header}\n{good}\n{good}\n": "line 3: question 1_0 appears twice",
        f"{header}\n{good},extra\n": "line 2: 14 fields, want 13",
        f"\ufeff{header}\n{good.replace(',0,0,CW', ',1,0,CW')}\n": None,  # a byte-order mark is fine
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text, encoding="utf-8")
        if message is None:
            (q,) = nextqa.load(str(bad), str(videos["nextqa"]), map_uri=str(DATA / "nextqa" / "map_vid_vidorID.json"))
            assert (q.id, q.answer) == ("1_0", "b") and q.skip_reason.startswith("video_not_in_map")
            continue
        with pytest.raises(BenchmarkFormatError, match=message):
            nextqa.load(str(bad), str(videos["nextqa"]), map_uri=str(DATA / "nextqa" / "map_vid_vidorID.json"))
    (tmp_path / "map.json").write_text('["not", "a", "map"]')
    with pytest.raises(BenchmarkFormatError, match="not a map_vid_vidorID.json"):
        nextqa.load(str(INPUTS["nextqa"]), str(videos["nextqa"]), map_uri=str(tmp_path / "map.json"))
    assert issubclass(BenchmarkFormatError, InputError)  # the CLI exits 2 with the one-line message


def test_star_fixture(videos):
    qs = star.load(str(INPUTS["star"]), str(videos["star"]))
    q = by_id(qs)
    assert len(qs) == 7
    seq = q["Sequence_T1_7"]  # its choices are listed in reverse choice_id order in the file
    assert seq.options == ("The blanket.", "The towel.", "The shoe.", "The food.")
    assert (seq.answer_index, seq.answer) == (1, "The towel.")
    assert (seq.start, seq.end) == (0.0, 5.5) and seq.video_uri == str(videos["star"] / "9QZ3M.mp4")
    assert seq.groups == {"type": ("Sequence",), "template": ("Sequence_T1",)}
    assert {x.groups["type"][0] for x in qs} == set(star.QUESTION_TYPES)
    assert q["Sequence_T3_9"].skip_reason.startswith("video_missing: ")
    assert q["Interaction_T1_77"].skip_reason == "bad_span: start 4.0 s, end 4.0 s"
    assert "situations" not in seq.fields and seq.split == "val"

    test = star.load(str(DATA / "star" / "STAR_test.json"), str(videos["star"]))
    assert [t.split for t in test] == ["test", "test"]
    assert all(t.answer is None and t.answer_index is None and not t.labelled and t.askable for t in test)


def test_star_bad_files(videos, tmp_path):
    item = json.loads(INPUTS["star"].read_text())[0]

    def load_with(**change):
        bad = tmp_path / "STAR_val.json"
        bad.write_text(json.dumps([{**item, **change}]))
        return star.load(str(bad), str(videos["star"]))

    with pytest.raises(BenchmarkFormatError, match="id does not start with a STAR question type"):
        load_with(question_id="Counting_T1_1")
    with pytest.raises(BenchmarkFormatError, match="answer 'The sofa.' is not one of its choices"):
        load_with(answer="The sofa.")
    with pytest.raises(BenchmarkFormatError, match="choice_id values are not 0..3"):
        load_with(choices=[{**c, "choice_id": c["choice_id"] + 1} for c in item["choices"]])
    with pytest.raises(BenchmarkFormatError, match="start 'soon' is not"):
        load_with(start="soon")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(BenchmarkFormatError, match="want a JSON list"):
        star.load(str(tmp_path / "obj.json"), str(videos["star"]))


def test_ids_never_become_paths_unchecked(videos, tmp_path):
    item = json.loads(INPUTS["star"].read_text())[0]
    for video_id in ("../../etc/passwd", "/etc/passwd", "a/../../b", "x\\y", "a/./b", "a//b", "a\nb"):
        path = tmp_path / "STAR_val.json"
        path.write_text(json.dumps([{**item, "video_id": video_id}]))
        (q,) = star.load(str(path), str(videos["star"]))
        assert q.skip_reason.startswith("unsafe_video_path: ") and q.video_uri is None, video_id
    with pytest.raises(BenchmarkFormatError, match="--videos .*: not a folder"):
        star.load(str(INPUTS["star"]), str(tmp_path / "nowhere"))


def test_agqa_fixture(videos):
    qs = agqa.load(str(INPUTS["agqa"]), str(videos["agqa"]))
    q = by_id(qs)
    assert len(qs) == 13 and all(x.open_answer for x in qs) and qs[0].split == "test"
    verify = q["K1P3D-8"]
    assert verify.options == ("no", "yes") and verify.answer_index == 1 and verify.steps == 3
    assert verify.groups == {"reasoning": ("exists",), "semantic": ("object",), "structural": ("verify",),
                             "answer_type": ("binary",)}
    obj = q["W7QX2-9"]  # "Book" and "cup": one spelling per normalised answer, sorted
    assert obj.options == ("Book", "cup") and obj.answer_index == 0 and obj.steps == 5
    assert obj.groups["reasoning"] == ("obj-rel", "superlative") and obj.groups["answer_type"] == ("open",)
    assert q["K1P3D-15"].options == ("Holding a cup.", "Sitting on a chair.")
    assert q["W7QX2-2"].options == ("after", "before") and q["W7QX2-2"].answer == "after"
    assert obj.fields["program"].startswith("Query(class") and obj.fields["vocabulary"] == "query/object"
    assert "sg_grounding" not in obj.fields and obj.start is None and obj.end is None
    assert q["M0SS1-1"].skip_reason.startswith("video_missing: ")
    assert sorted(x.steps for x in qs) == [1, 1, 2, 2, 3, 3, 3, 3, 3, 4, 5, 5, 6]
    assert agqa.answer_vocabulary(agqa.read_questions(str(INPUTS["agqa"])))["verify/object"] == ("no", "yes")


def test_agqa_vocabulary_from_the_train_file(videos):
    qs = by_id(agqa.load(str(INPUTS["agqa"]), str(videos["agqa"]),
                         vocabulary_uri=str(DATA / "agqa" / "train_balanced.txt")))
    assert qs["K1P3D-12"].options == ("cup", "pillow") and qs["K1P3D-12"].answer_index == 0
    assert qs["W7QX2-9"].answer == "Book" and qs["W7QX2-9"].answer_index is None  # not among train answers
    assert qs["K1P3D-15"].skip_reason.startswith("no_vocabulary: 0 distinct answer(s) of type query/action")


def test_agqa_bad_files(videos, tmp_path):
    item = json.loads(INPUTS["agqa"].read_text())["K1P3D-3"]
    for change, message in [({"steps": "one"}, "steps 'one' is not int"), ({"steps": 0}, "steps 0 is not >= 1"),
                            ({"global": "exists"}, "global 'exists' is not list")]:
        bad = tmp_path / "test_balanced.txt"
        bad.write_text(json.dumps({"K1P3D-3": {**item, **change}}))
        with pytest.raises(BenchmarkFormatError, match=message):
            agqa.load(str(bad), str(videos["agqa"]))
    bad.write_text("[1, 2]")
    with pytest.raises(BenchmarkFormatError, match="not a JSON object of questions"):
        agqa.load(str(bad), str(videos["agqa"]))
    bad.write_text(json.dumps({"K1P3D-3": item})[:-1] + ', "K1P3D-3": ' + json.dumps(item) + "}")
    with pytest.raises(BenchmarkFormatError, match="question K1P3D-3 appears twice"):
        agqa.load(str(bad), str(videos["agqa"]))
    bad.write_text('{"K1P3D-3": {not json}}')
    with pytest.raises(BenchmarkFormatError, match="not JSON"):
        agqa.load(str(bad), str(videos["agqa"]))


def test_streamed_json_object_reader(tmp_path):
    """AGQA files are read a block at a time: the same items as json.loads, whatever the block size."""
    from step_ray.eval.benchmarks.common import iter_json_object

    text = INPUTS["agqa"].read_text()
    for block in (1, 7, 64, 1 << 20):
        assert dict(iter_json_object(str(INPUTS["agqa"]), "q", block=block)) == json.loads(text)
    odd = tmp_path / "odd.txt"
    odd.write_text('\ufeff { "caf\u00e9-1" : {"n": -12.5e1, "ok": true, "none": null, "s": "\\"\u00e9\u00e9"} ,\n'
                   '"x" : [1, 2] , "y": 7 }  ', encoding="utf-8")
    for block in (1, 2, 3, 1 << 20):
        assert dict(iter_json_object(str(odd), "q", block=block)) == {
            "caf\u00e9-1": {"n": -125.0, "ok": True, "none": None, "s": '"\u00e9\u00e9'}, "x": [1, 2], "y": 7}
    odd.write_text(" {} ")
    assert list(iter_json_object(str(odd), "q")) == []
    for bad, message in [("[1, 2]", "found '\\[' where one of '{' belongs"),
                         ('{"a": {"b": 1}', "found the end of the file"),
                         ('{"a": {"b": 1', "not JSON"), ('{"a" {}}', "found '{' where one of ':' belongs"),
                         ('{"a": {}, }', "found '}' where one of '\"' belongs")]:
        odd.write_text(bad)
        with pytest.raises(BenchmarkFormatError, match=message):
            list(iter_json_object(str(odd), "q", block=3))


def test_registry(videos):
    with pytest.raises(BenchmarkFormatError, match="--benchmark mmlu: not one of nextqa, star, agqa, qra"):
        load_benchmark("mmlu", str(INPUTS["star"]), str(videos["star"]))
    with pytest.raises(BenchmarkFormatError, match="takes no option map_uri"):
        load_benchmark("star", str(INPUTS["star"]), str(videos["star"]), map_uri="x")
    assert len(load_benchmark("star", str(INPUTS["star"]), str(videos["star"]), map_uri=None)) == 7


def test_nextqa_from_an_object_store(s3_server, videos):
    """Questions, map and videos under s3:// (a local S3-compatible server): the same records, s3:// URIs."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{s3_server}", allow_bucket_creation=True)
    fs.create_dir("bench")
    for local, key in [(INPUTS["nextqa"], "nextqa/val.csv"),
                       (DATA / "nextqa" / "map_vid_vidorID.json", "nextqa/map_vid_vidorID.json")]:
        with fs.open_output_stream(f"bench/{key}") as f:
            f.write(Path(local).read_bytes())
    for path in sorted(videos["nextqa"].rglob("*.mp4")):
        with fs.open_output_stream(f"bench/videos/{path.relative_to(videos['nextqa']).as_posix()}") as f:
            f.write(path.read_bytes())
    remote = by_id(load_benchmark("nextqa", "s3://bench/nextqa/val.csv", "s3://bench/videos"))
    local = by_id(load_benchmark("nextqa", str(INPUTS["nextqa"]), str(videos["nextqa"])))
    assert remote["1000000001_0"].video_uri == "s3://bench/videos/0001/1000000001.mp4"
    assert remote["1000000004_0"].skip_reason == "video_missing: s3://bench/videos/0002/1000000004.mp4"
    assert {k: (q.options, q.answer_index, q.groups, q.askable) for k, q in remote.items()} == \
        {k: (q.options, q.answer_index, q.groups, q.askable) for k, q in local.items()}
    with pytest.raises(BenchmarkFormatError, match="s3://bench/nextqa/test.csv: no such file"):
        load_benchmark("nextqa", "s3://bench/nextqa/test.csv", "s3://bench/videos")
