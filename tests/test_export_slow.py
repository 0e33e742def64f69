"""Full-size r2p1d: FP32 + FP16 export with verify, as ``heke-export --verify`` runs it."""

from __future__ import annotations

import time

import pytest

from heke_export.pipeline import ExportOptions, artifacts_from_weights, weights_for
from tests.conftest import REFERENCE_DIR, reference_file

# Issue 3: full export and verify under 3 minutes on the 2-core CI machine. Checked on the
# process CPU time: on an idle machine wall time is at most that (the work runs on >= 1 core),
# and unlike wall time it does not grow when other jobs share the machine.
BUDGET_S = 180


@pytest.mark.slow
def test_full_r2p1d_export_and_verify(tmp_path):
    # The authors' reference weights, so the verify also compares with their stored outputs.
    weights = weights_for("r2p1d_HEKE_4", reference_file("upstream_r2p1d_HEKE_4.npz"))
    lines: list[str] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    result = artifacts_from_weights(
        weights,
        tmp_path,
        ExportOptions(verify=True, reference_dir=REFERENCE_DIR),
        echo=lines.append,
    )
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = "\n".join(lines)
    print(f"{report}\nfull r2p1d export + verify: {elapsed:.0f} s wall, {cpu:.0f} s CPU")
    assert result.verified and len(result.reports) == 2, report
    assert report.count("vs authors' outputs") == 1  # the shared reference case
    assert "generated 1x144x256" in report  # the fp16 case with T*H*W > 65504 at stage 1
    assert cpu < BUDGET_S, f"took {cpu:.0f} s of CPU ({elapsed:.0f} s wall), budget {BUDGET_S} s"
