"""Dataset lists: both formats, the authors' normalisation, MOS/DMOS, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heke_finetune.datasets import (
    DatasetListError,
    VideoEntry,
    load_list,
    normalise_scores,
    parse_list,
    write_authors_list,
)
from heke_runtime.errors import HekeError
from tests.conftest import reference_file


def parse(text: str, name: str = "my_list.txt"):
    return parse_list(text, source=name, base=Path("/data/set"))


def upstream_normalised(scores):
    """The authors' lines: a float32 array, then 1 + 8.5*(s - min)/(max - min)."""
    score_list = np.array(scores, dtype="float32")
    return 1 + 8.5 * (score_list - score_list.min()) / (score_list.max() - score_list.min())


def test_authors_list_is_read_like_upstream():
    path = reference_file("LIVE_list_for_VQA.txt")
    dataset = load_list(path)
    assert dataset.name == "LIVE" and dataset.format == "authors" and len(dataset) == 150
    assert dataset.content_ids() == [str(i) for i in range(10)]
    assert dataset.preset is not None and dataset.preset.batch_size == 15
    raw = [float(line.split()[4]) for line in path.read_text().splitlines()]
    expected = upstream_normalised(raw)
    assert dataset.targets().dtype == np.float32
    np.testing.assert_array_equal(dataset.targets(), expected)  # bit for bit
    assert dataset.direction() == "dmos"
    first = dataset.entries[0]
    assert (first.width, first.height, first.frames) == (768, 432, 250)
    assert dataset.paths()[0] == path.parent / first.path


def test_mos_lists_are_reversed_after_normalising():
    text = "0 0 r.yuv a.yuv 4.0 352 288 298\n1 0 s.yuv b.yuv 2.0 352 288 298\n"
    mos = parse(text, "EPFL-PoliMI_list_for_VQA.txt")
    assert mos.direction() == "mos"  # the authors' --mos dataset
    np.testing.assert_array_equal(mos.targets(), np.float32(10.5) - upstream_normalised([4, 2]))
    np.testing.assert_array_equal(mos.targets("dmos"), upstream_normalised([4, 2]))
    header = parse("# direction: mos\n" + text)
    assert header.direction() == "mos" and header.direction("dmos") == "dmos"
    with pytest.raises(DatasetListError, match="valid: auto, dmos, mos"):
        header.direction("up")


def test_plain_format_with_contents_tabs_and_comments():
    text = "# dataset: mine\n\nvideos/a.mp4 3.5\nvideos/b.mp4 4.5\n"
    plain = parse(text)
    assert plain.format == "plain" and plain.name == "mine"
    assert plain.content_ids() == ["videos/a.mp4", "videos/b.mp4"]  # each video its own content
    grouped = parse("a.mp4 1 sceneA\nb.mp4 2 sceneB\nc.mp4 3 sceneA\n")
    np.testing.assert_array_equal(grouped.content_index(), [0, 1, 0])
    spaced = parse("my video.mp4\t2.5\n")
    assert spaced.entries[0].path == "my video.mp4" and spaced.entries[0].score == 2.5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a.mp4 1\nb.mp4 2 x y\n", r"my_list.txt:2: expected 'path score \[content\]'"),
        ("a.mp4 1\nb.mp4 good\n", r"my_list.txt:2: score 'good' is not a number"),
        ("a.mp4 nan\n", r"my_list.txt:1: score 'nan' is not a finite number"),
        ("0 0 r a 1 352 288 10\nb.mp4 2\n", r"my_list.txt:2: 2 fields, but earlier lines"),
        ("x 0 r a 1 352 288 10\n", r"my_list.txt:1: ref_id 'x' is not an integer"),
        ("0 0 r a 1 352 -288 10\n", r"my_list.txt:1: height must be positive"),
        ("a.mp4 1\na.mp4 2\n", r"my_list.txt:2: a.mp4 is listed twice \(first on line 1\)"),
        ("# only a comment\n", "holds no videos"),
    ],
)
def test_bad_lines_are_named(text, match):
    with pytest.raises(DatasetListError, match=match) as info:
        parse(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, HekeError) and isinstance(info.value, ValueError)


def test_missing_file_and_constant_scores(tmp_path):
    with pytest.raises(DatasetListError, match="no such dataset list"):
        load_list(tmp_path / "absent.txt")
    with pytest.raises(DatasetListError, match=r"every score is 3\.0"):
        parse("a.mp4 3\nb.mp4 3\n").targets()
    with pytest.raises(DatasetListError, match="no scores"):
        normalise_scores(np.array([]))


def test_authors_list_round_trips(tmp_path):
    entries = [
        VideoEntry("dis/a.mp4", 30.25, "0", 0, "ref/a.mkv", "1", 128, 72, 40),
        VideoEntry("dis/b.mp4", 20.5, "1", 0, "ref/b.mkv", "2", 128, 72, 40),
    ]
    path = write_authors_list(tmp_path / "x_list_for_VQA.txt", entries, ["direction: mos"])
    back = load_list(path)
    assert back.name == "x" and back.direction() == "mos"
    assert [(e.path, e.score, e.content, e.reference) for e in back.entries] == [
        (e.path, e.score, e.content, e.reference) for e in entries
    ]
    with pytest.raises(DatasetListError, match="without spaces"):
        write_authors_list(
            tmp_path / "y.txt", [VideoEntry("a b.mp4", 1, "0", 0, "r", "0", 2, 2, 1)]
        )
