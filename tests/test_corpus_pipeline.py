"""The corpus stages without Ray: what a decode task ships and what the actor makes of it."""

from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the corpus stages need pyarrow (heke[ray])")

from heke_runtime.corpus_pipeline import (  # noqa: E402
    finish_decoded,
    input_rows,
    pack_decoded,
    prepare_batch,
    unpack_decoded,
)
from heke_runtime.scorer import decode_video  # noqa: E402
from tests.videos import make_video  # noqa: E402


@pytest.mark.filterwarnings("ignore::heke_runtime.sampling.ShortVideoWarning")  # 30 frames
@pytest.mark.parametrize(("model", "snippets"), [("r2p1d_HEKE_4", 12), ("resnet_HEKE_4", 20)])
def test_actor_inputs_equal_the_scorers_and_sums_cross_ray(tmp_path, model, snippets) -> None:
    path = str(make_video(tmp_path / "v.mp4", size=(96, 54), frames=30))
    want = decode_video(path, model, snippets, None)
    shipped = decode_video(path, model, snippets, None, sums_only=True)
    meta, tensor = pack_decoded(shipped)
    got = finish_decoded(unpack_decoded(meta, tensor), model)
    assert got.inputs.keys() == want.inputs.keys()
    for name, array in want.inputs.items():
        assert got.inputs[name].dtype == array.dtype and np.array_equal(got.inputs[name], array)
    assert got.warnings == want.warnings and np.array_equal(got.plan, want.plan)
    # What crosses the object store: uint16 sums of distinct frames, at most half the floats.
    assert shipped.inputs["sums"].dtype == np.uint16
    assert 2 * tensor.size <= sum(a.nbytes for a in want.inputs.values())


def test_a_file_that_cannot_be_decoded_is_a_prep_error(tmp_path) -> None:
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(b"not a video")
    rows = input_rows([str(bad)], [None], [None])
    prepared = prepare_batch(rows, model="r2p1d_HEKE_4", num_snippets=12, size=None)
    row = prepared.drop_columns(["tensor"]).to_pylist()[0]
    assert row["decoded"] is None and row["prep_error"]
    assert prepared.column("tensor").to_pylist() == [b""]
