"""Write the shared reference weights (``w/*`` of an ``upstream_<model>.npz``) as a checkpoint
in the authors' format, so heke-bench and the torch backend run weights users can trust for
accuracy figures (seeded on a power-of-two grid, calibrated BatchNorm; not the paper's).

    python benchmarks/reference_checkpoint.py ../shared/reference/upstream_r2p1d_HEKE_4.npz OUT.pkl
"""

from __future__ import annotations

import argparse
from pathlib import Path

from heke_ref.checkpoint import load_reference_weights, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", type=Path, help="upstream_r2p1d_HEKE_4.npz (or the resnet one)")
    parser.add_argument("out", type=Path, help="checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    model = args.npz.stem.removeprefix("upstream_")
    save_checkpoint(load_reference_weights(args.npz, model), args.out)
    print(f"wrote {args.out} ({model}, weights of {args.npz.name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
