"""HDR input: PQ/HLG detection from real x265 HDR encodes, the record's fields and warning, and
``--hdr tonemap`` checked against an independent per-pixel implementation of its curve."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from heke_runtime import hdr
from heke_runtime.cli import main
from heke_runtime.decode import HdrWarning, probe_video, read_frames
from heke_runtime.results import read_records
from heke_runtime.scorer import Scorer
from tests.test_backends import tiny_engine
from tests.videos import make_video

MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"  # 1000 nits
HDR10 = f"colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:hdr10=1:master-display={MASTER}"
HLG = "colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc"


def hdr_video(path: Path, params: str, frames: int = 8) -> Path:
    """A real 10-bit HEVC HDR encode (libx265's HDR options write the VUI and SEI)."""
    options = {"x265-params": f"log-level=error:crf=10:{params}"}
    return make_video(path, codec="libx265", pix_fmt="yuv420p10le", frames=frames, options=options)


@pytest.fixture(scope="module")
def hdr10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hdr_video(tmp_path_factory.mktemp("hdr") / "hdr10.mp4", f"{HDR10}:max-cll=1000,400")


def decoded(path: Path, index: int, fmt: str) -> np.ndarray:
    """Frame ``index`` converted straight by PyAV, as the runtime did before --hdr."""
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format=fmt, interpolation="BICUBIC")
    raise AssertionError(f"no frame {index}")


def test_detection_from_real_files(tmp_path, hdr10):
    info = probe_video(hdr10)
    assert (info.transfer, info.primaries, info.peak_nits) == ("pq", "bt2020", 1000.0)
    assert info.pix_fmt == "yuv420p10le"
    no_cll = probe_video(hdr_video(tmp_path / "master.mp4", HDR10))  # mastering display only
    assert (no_cll.transfer, no_cll.peak_nits) == ("pq", 1000.0)
    hlg = probe_video(hdr_video(tmp_path / "hlg.mkv", HLG))
    assert (hlg.transfer, hlg.primaries, hlg.peak_nits) == ("hlg", "bt2020", None)
    sdr = probe_video(make_video(tmp_path / "sdr.mp4", frames=5))
    assert (sdr.transfer, sdr.primaries, sdr.peak_nits) == ("sdr", "unspecified", None)


def test_as_is_is_the_plain_conversion_and_both_modes_warn(hdr10):
    info = probe_video(hdr10)
    with pytest.warns(HdrWarning, match=r"HDR video \(PQ transfer, bt2020 primaries, peak 1000"):
        frames = dict(read_frames(hdr10, [0, 5], info=info, hdr="as-is"))
    for index, rgb in frames.items():
        np.testing.assert_array_equal(rgb, decoded(hdr10, index, "rgb24"))
    with pytest.warns(HdrWarning, match="tonemapped to SDR BT.709"):
        list(read_frames(hdr10, [0], info=info))  # tonemap is the default
    with pytest.raises(ValueError, match="hdr must be 'tonemap' or 'as-is', got 'hable'"):
        read_frames(hdr10, [0], info=info, hdr="hable")  # type: ignore[arg-type]


def _pq_nits(v: float) -> float:
    m1, m2 = 0.1593017578125, 78.84375
    c1, c2, c3 = 0.8359375, 18.8515625, 18.6875
    p = v ** (1 / m2)
    return 10000 * (max(p - c1, 0) / (c2 - c3 * p)) ** (1 / m1)


def _pq_code(nits: float) -> float:
    m1, m2 = 0.1593017578125, 78.84375
    c1, c2, c3 = 0.8359375, 18.8515625, 18.6875
    y = (nits / 10000) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def _bt2390(nits: float, peak: float, target: float = 100.0) -> float:
    source = _pq_code(peak)
    e1 = min(_pq_code(nits) / source, 1.0)
    max_lum = _pq_code(target) / source
    ks = 1.5 * max_lum - 0.5
    if e1 < ks:
        return nits
    t = (e1 - ks) / (1 - ks)
    e2 = (2 * t**3 - 3 * t**2 + 1) * ks + (t**3 - 2 * t**2 + t) * (1 - ks)
    e2 += (-2 * t**3 + 3 * t**2) * max_lum
    return _pq_nits(e2 * source)


def _tonemap_pixel(rgb48: np.ndarray, peak: float) -> list[int]:
    """The documented curve, one pixel, scalar math (independent of heke_runtime.hdr)."""
    linear = [_pq_nits(int(v) / 65535) for v in rgb48]
    matrix = [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]]
    bt709 = [max(sum(m * c for m, c in zip(row, linear)), 0.0) for row in matrix]
    top = max(bt709)
    scale = _bt2390(top, peak) / top if top > 0 else 0.0
    return [round(min(c * scale / 100, 1.0) ** (1 / 2.4) * 255) for c in bt709]


def test_tonemap_follows_the_documented_curve(hdr10):
    info = probe_video(hdr10)
    with pytest.warns(HdrWarning):
        rgb = dict(read_frames(hdr10, [5], info=info, hdr="tonemap"))[5]
    source = decoded(hdr10, 5, "rgb48le")
    assert rgb.shape == source.shape and rgb.dtype == np.uint8
    height, width = rgb.shape[:2]
    for y, x in [(0, 0), (height // 6, width // 8), (height // 2, width // 2), (height - 1, 40)]:
        expected = _tonemap_pixel(source[y, x], peak=1000.0)
        assert np.abs(rgb[y, x].astype(int) - expected).max() <= 1, (y, x, rgb[y, x], expected)
    # The picture really changed: PQ code values read as SDR are not what a viewer sees.
    assert np.abs(rgb.astype(int) - decoded(hdr10, 5, "rgb24")).mean() > 5


def test_tone_curve_properties():
    nits = np.array([0.0, 1.0, 10.0, 18.0, 27.0, 100.0, 203.0, 500.0, 1000.0, 4000.0])
    mapped = hdr.eetf(nits, 1000.0)
    assert np.all(np.diff(mapped) >= 0) and mapped[-1] == pytest.approx(100.0)
    np.testing.assert_allclose(mapped[:5], nits[:5], rtol=1e-9)  # below the knee: unchanged
    codes = np.rint((mapped / 100) ** (1 / 2.4) * 255)
    assert list(codes[[3, 5, 6, 8]]) == [125, 219, 242, 255]  # documented in heke_runtime.hdr
    for value in (0.0, 18.0, 100.0, 600.0):
        assert float(hdr.eetf(np.array(value), 1000.0)) == pytest.approx(_bt2390(value, 1000.0))


def test_records_carry_the_fact(tmp_path, hdr10, capsys):
    sdr = make_video(tmp_path / "sdr.mp4", frames=30)
    engine = tiny_engine("r2p1d_HEKE_4")
    out = tmp_path / "default.jsonl"
    assert main([str(hdr10), str(sdr), "-e", str(engine), "-o", str(out)]) == 0
    first, second = read_records(out)
    assert {k: first["video"][k] for k in ("transfer", "primaries", "hdr")} == {
        "transfer": "pq", "primaries": "bt2020", "hdr": "tonemap"
    }  # fmt: skip
    notes = [w for w in first["warnings"] if "HDR video" in w]
    assert len(notes) == 1 and "HEKE was trained on SDR: tonemapped" in notes[0]
    assert second["video"]["transfer"] == "sdr" and second["video"]["hdr"] is None
    assert not any("HDR" in w for w in second["warnings"])
    out = tmp_path / "as-is.jsonl"
    assert main([str(hdr10), "-e", str(engine), "-o", str(out), "--hdr", "as-is"]) == 0
    (record,) = read_records(out)
    assert record["video"]["hdr"] == "as-is"
    assert any("scored as-is" in w for w in record["warnings"])
    capsys.readouterr()
    assert main([str(hdr10), "-e", str(engine), "--hdr", "clip"]) == 2
    assert "--hdr must be 'tonemap' or 'as-is', got 'clip'" in capsys.readouterr().err


def test_scorer_modes_differ_only_for_hdr(tmp_path, hdr10):
    sdr = make_video(tmp_path / "sdr.mp4", frames=30)
    engine = tiny_engine("r2p1d_HEKE_4")
    scores = {}
    for mode in ("tonemap", "as-is"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", HdrWarning)  # captured into the result, not raised
            with Scorer(engine, workers=0, hdr=mode) as scorer:
                scores[mode] = [scorer.score(p).scores["ensemble"] for p in (hdr10, sdr)]
    assert scores["tonemap"][1] == scores["as-is"][1]
    assert scores["tonemap"][0] != scores["as-is"][0]
