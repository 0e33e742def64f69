"""Run the authors' FR code under GNU Octave on the pairs of tests/fr_pairs.py and store the
per-frame values it gives in tests/data/fr/expected.json (the parity target of
tests/test_fr_parity.py).

    python scripts/fr_reference.py --authors BVQA-HEKE/WELL-Set/fr_vqa_for_weak_labels \\
        [--authors-commit SHA] [--encode] [--pairs carphone,bbb-h264]

``--authors`` is the folder of their code in a checkout of Sissuire/BVQA-HEKE. Nothing of it
is copied into this repository: the script writes each pair as raw yuv420p (what their
``demo_run.m`` reads), compiles their ``corrDn.c`` for Octave with ``mkoctfile --mex`` in a
temporary folder, and calls their ``load_frames``, ``extract_*`` and ``compute_*`` functions
from a small driver. Debian's Octave lacks ``nanmean`` (their ``compute_strred`` calls it), so
the driver folder gets a one-line helper. ``--encode`` remakes the committed distorted clips
first. Needs ``octave``, ``octave-image`` and ``liboctave-dev`` (for ``mkoctfile``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests.*

from tests.fr_pairs import (
    EXPECTED,
    PAIRS,
    Pair,
    distorted_yuv,
    encode_distorted,
    reference_yuv,
)

METRICS = ("gmsd", "stgmsd", "strred", "msssim")
MEX_SOURCES = ("corrDn.c", "convolve.c", "edges.c", "wrap.c")

# Their copy of matlabPyrTools lacks the header its C files share, and Octave has no MATLAB
# <matrix.h> (mex.h covers it): two small stand-ins with the names the C files use.
CONVOLVE_H = """#include <stdio.h>
#define ABS(x) (((x) >= 0) ? (x) : (-(x)))
#define ROOT2 1.4142135623730951
#define REDUCE 0
#define EXPAND 1
#define IS ==
#define ISNT !=
#define AND &&
#define OR ||
typedef double image_type;
typedef int (*fptr)();
typedef struct { char *name; fptr func; } EDGE_HANDLER;
fptr edge_function(char *edges);
int internal_reduce(); int internal_expand();
int internal_wrap_reduce(); int internal_wrap_expand();
"""

NANMEAN = """function m = nanmean(x, dim)
  if nargin < 2, dim = 1; end
  keep = ~isnan(x); x(~keep) = 0; m = sum(x, dim) ./ sum(keep, dim);
end
"""

# Mirrors the body of their demo_run.m for one pair, and writes each series in full precision.
DRIVER = """function run_pair(ref_file, dst_file, width, height, noof, out_prefix)
  [ref, ref_scaled] = load_frames(ref_file, width, height, noof);
  [dst, dst_scaled] = load_frames(dst_file, width, height, noof);
  s.msssim = compute_msssim(extract_msssim(ref), extract_msssim(dst));
  s.gmsd = compute_gmsd(extract_gmsd(ref_scaled), extract_gmsd(dst_scaled));
  s.stgmsd = comptue_stgmsd(extract_stgmsd(ref_scaled), extract_stgmsd(dst_scaled));
  s.strred = compute_strred(extract_strred(ref), extract_strred(dst));
  names = fieldnames(s);
  for k = 1:numel(names)
    dlmwrite([out_prefix, names{k}, '.txt'], s.(names{k})(:), 'precision', '%.17g');
  end
end
"""


def _setup(authors: Path, work: Path) -> None:
    """Their code on Octave's path, corrDn compiled from their C source, and the helpers."""
    pyr_tools = work / "matlabPyrTools"
    shutil.copytree(authors / "matlabPyrTools", pyr_tools)
    (pyr_tools / "convolve.h").write_text(CONVOLVE_H)
    (pyr_tools / "matrix.h").write_text("#include <mex.h>\n")
    subprocess.run(
        ["mkoctfile", "--mex", "-I.", "-o", "corrDn", *MEX_SOURCES],
        cwd=pyr_tools,
        check=True,
        capture_output=True,
    )
    (work / "nanmean.m").write_text(NANMEAN)
    (work / "run_pair.m").write_text(DRIVER)


def _write_yuv(frames: list[np.ndarray], path: Path) -> None:
    with path.open("wb") as out:
        for flat in frames:
            out.write(flat.astype(np.uint8).tobytes())


def _run(pair: Pair, authors: Path, work: Path) -> dict[str, object]:
    width, height = pair.size
    ref, dst = work / f"{pair.name}.ref.yuv", work / f"{pair.name}.dst.yuv"
    _write_yuv(list(reference_yuv(pair)), ref)
    _write_yuv(list(distorted_yuv(pair)), dst)
    prefix = work / f"{pair.name}."
    # Their functions first on the path (the pyramid's corrDn as the compiled mex), then ours.
    script = (
        f"pkg load image; addpath('{authors}'); addpath('{authors / 'functions'}');"
        f"addpath('{work / 'matlabPyrTools'}'); addpath('{work}');"
        f"printf('corrDn: %s\\n', which('corrDn'));"
        f"run_pair('{ref}', '{dst}', {width}, {height}, {pair.frames}, '{prefix}');"
    )
    out = subprocess.run(
        ["octave-cli", "--no-gui", "--quiet", "--eval", script],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if not any(line.startswith("corrDn: ") and line.endswith(".mex") for line in out.splitlines()):
        raise SystemExit(f"their corrDn did not resolve to the compiled mex:\n{out}")
    record: dict[str, object] = {"frames": pair.frames, "width": width, "height": height}
    for metric in METRICS:
        values = np.loadtxt(f"{prefix}{metric}.txt", ndmin=1)
        record[metric] = [None if np.isnan(v) else float(v) for v in values]
    return record


def _octave_version() -> str:
    out = subprocess.run(["octave-cli", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--authors",
        type=Path,
        required=True,
        help="WELL-Set/fr_vqa_for_weak_labels of a BVQA-HEKE checkout",
    )
    parser.add_argument("--authors-commit", default="", help="the checkout's commit, recorded")
    parser.add_argument("--encode", action="store_true", help="remake the distorted clips")
    parser.add_argument("--pairs", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    authors = args.authors.resolve()
    chosen = [p for p in PAIRS if not args.pairs or p.name in args.pairs.split(",")]
    stored = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {"pairs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _setup(authors, work)
        for pair in chosen:
            if args.encode and pair.codec is not None:
                encode_distorted(pair)
            print(f"{pair.name}: running the authors' code under Octave", flush=True)
            stored["pairs"][pair.name] = _run(pair, authors, work)
    stored["generated_by"] = "scripts/fr_reference.py"
    stored["octave"] = _octave_version()
    stored["authors_commit"] = args.authors_commit or stored.get("authors_commit", "")
    EXPECTED.parent.mkdir(parents=True, exist_ok=True)
    EXPECTED.write_text(json.dumps(stored, indent=1) + "\n")
    print(f"wrote {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
