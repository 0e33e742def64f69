"""Plant known bugs one at a time in a temporary copy of the repo; each must fail a test.

Each bug below once passed the whole suite (a reviewer planted them by hand). This script keeps
them caught: for every bug it copies the working tree (tracked and untracked, not ignored) to a
temporary folder, applies the one edit, runs the tests that should notice, and reports which
test failed first. A bug whose tests all pass is a SURVIVOR, and one whose tests all skip on
this machine is UNTESTED; either makes the exit status 1.

First it runs the same tests on the unmodified copy: a test that fails there would "catch"
every bug, so the run stops instead (exit 2).

    .venv/bin/python scripts/plant_bugs.py            # every bug
    .venv/bin/python scripts/plant_bugs.py run-size   # some, by name
    .venv/bin/python scripts/plant_bugs.py --list

The copy imports its own sources: PYTHONPATH puts its package folders ahead of the editable
install, so the venv of the real checkout runs the planted code (checked for each bug).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
PACKAGE_FOLDERS = (".", "runtime", "export", "corpus", "finetune", "serve", "benchmarks")


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    file: str
    old: str  # must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]


FR_TESTS = ("tests/test_fr_parity.py", "tests/test_fr_cli.py")
SERVE_TESTS = ("tests/test_serve.py",)
LIVE_TESTS = ("tests/test_sources_live.py",)
SERVE_RAY_CLI = ("tests/test_serve_ray.py::test_the_cli_serves_on_a_cluster_and_drains_on_sigterm",)

BUGS = (
    Bug(
        "run-timeout",
        "heke-run --timeout never reaches the pipeline",
        "runtime/heke_runtime/cli.py",
        "            timeout=timeout,\n",
        "            timeout=None,\n",
        ("tests/test_cli_run.py",),
    ),
    Bug(
        "corpus-timeout",
        "heke-corpus --timeout is dropped before the decode tasks",
        "corpus/heke_corpus/pipeline.py",
        '"timeout_s": config.get("timeout_s"),',
        '"timeout_s": None,',
        ("tests/test_corpus_cluster.py::test_a_decode_past_the_timeout_is_heke_runs_error_record",),
    ),
    Bug(
        "run-size",
        "heke-run --size never reaches the decoder",
        "runtime/heke_runtime/cli.py",
        "            size=dims,\n",
        "            size=None,\n",
        ("tests/test_cli_run.py",),
    ),
    Bug(
        "resume-ok-only",
        "--resume skips only inputs recorded 'ok', not failed ones",
        "runtime/heke_runtime/results.py",
        "        return path_key(path) in self.done\n",
        '        return self.done.get(path_key(path)) == "ok"\n',
        ("tests/test_cli_run.py",),
    ),
    Bug(
        "weights-hash",
        "the Scorer does not pass the engine's weights hash to the regressor check",
        "runtime/heke_runtime/scorer.py",
        "loaded.check_engine(self.model, width, self.sidecar.weights_sha256)",
        "loaded.check_engine(self.model, width)",
        ("tests/test_scorer.py", "tests/test_cli_run.py"),
    ),
    Bug(
        "intra-leak",
        "intra-dataset fine-tuning trains on the test contents' videos too",
        "finetune/heke_finetune/train.py",
        "for part in (split.train, split.validation, split.test)",
        "for part in (split.train + split.test, split.validation, split.test)",
        ("tests/test_finetune.py",),
    ),
    Bug(
        "select-epoch-on-test",
        "--select-epoch validation reports the epoch that was best on the test data",
        "finetune/heke_finetune/train.py",
        'better = self.mode == "oracle-test" and score > self.test_best[name]',
        'better = self.mode != "last" and score > self.test_best[name]',
        ("tests/test_finetune.py",),
    ),
    Bug(
        "select-epoch-default",
        "heke-finetune intra defaults to choosing the epoch on the test set",
        "finetune/heke_finetune/cli.py",
        # intra's options: only it has max_splits after direction
        'Select = "validation",\n    stages: Stages = None,\n    poolings: Poolings = None,\n'
        '    direction: DirectionOpt = "auto",\n    max_splits',
        'Select = "oracle-test",\n    stages: Stages = None,\n    poolings: Poolings = None,\n'
        '    direction: DirectionOpt = "auto",\n    max_splits',
        ("tests/test_finetune.py",),
    ),
    Bug(
        "bf16-rows-shifted",
        "the BF16 CPU backend returns every row one place late",
        "export/heke_export/torch_backend.py",
        '        return {"heads": _numpy(heads), "features": _numpy(features)}\n',
        '        return {"heads": np.roll(_numpy(heads), 1, 0), '
        '"features": np.roll(_numpy(features), 1, 0)}\n',
        ("tests/test_bf16_reference.py",),
    ),
    Bug(
        "bf16-constant-heads",
        "the BF16 CPU backend gives every clip the batch's mean heads",
        "export/heke_export/torch_backend.py",
        '        return {"heads": _numpy(heads), "features": _numpy(features)}\n',
        '        return {"heads": np.broadcast_to(_numpy(heads).mean(0), heads.shape).copy(), '
        '"features": _numpy(features)}\n',
        ("tests/test_bf16_reference.py",),
    ),
    Bug(
        "no-learning",
        "fine-tuning computes gradients but never steps the optimiser",
        "finetune/heke_finetune/train.py",
        "            optimizer.step()\n",
        "            pass\n",
        ("tests/test_synthetic.py::test_protocol_end_to_end_on_demo_features",),
    ),
    Bug(
        "fr-gmsd-std",
        "GMSD pools with the population std, not MATLAB's std2 (N-1)",
        "finetune/heke_finetune/fr/metrics.py",
        "    return float(np.std(similarity, ddof=1))\n",
        "    return float(np.std(similarity))\n",
        FR_TESTS,
    ),
    Bug(
        "fr-strred-overlap",
        "ST-RRED pairs frames (1,2), (2,3)... instead of the authors' (1,2), (3,4)...",
        "finetune/heke_finetune/fr/pairs.py",
        "        (ref_first, dst_first), self._first = self._first, None\n",
        "        (ref_first, dst_first), self._first = self._first, (ref, dst)\n",
        FR_TESTS,
    ),
    Bug(
        "fr-msssim-levels",
        "MS-SSIM multiplies full SSIM at every level, not contrast-structure below the last",
        "finetune/heke_finetune/fr/metrics.py",
        "        product *= (ssim if last else cs) ** weight\n",
        "        product *= ssim**weight\n",
        FR_TESTS,
    ),
    Bug(
        "fr-rate-ignored",
        "heke-fr compares videos whose frame rates differ",
        "finetune/heke_finetune/fr/pairs.py",
        "    return math.isclose(first.fps, second.fps, rel_tol=RATE_SLACK)\n",
        "    return True\n",
        FR_TESTS,
    ),
    Bug(
        "fr-agreement-unoriented",
        "heke-eval --fr compares heads with MS-SSIM as it runs (higher = better)",
        "finetune/heke_finetune/evaluate.py",
        '    return 1.0 - value if DIRECTION[metric] == "higher-is-better" else value\n',
        "    return value\n",
        ("tests/test_fr_agreement.py",),
    ),
    Bug(
        "serve-timeout",
        "heke-serve --timeout never reaches the decoding",
        "serve/heke_serve/cli.py",
        "        timeout_s=timeout,\n",
        "        timeout_s=None,\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-on-damage",
        "heke-serve --on-damage never reaches the decoder",
        "serve/heke_serve/cli.py",
        '            on_damage=cast("OnDamage", on_damage),\n',
        "",
        SERVE_TESTS,
    ),
    Bug(
        "serve-max-queue",
        "heke-serve buffers without bound: --max-queue ignored",
        "serve/heke_serve/service.py",
        "            if self.admitted >= self.limits.max_queue:\n",
        "            if False:\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-batch-delay",
        "heke-serve --batch-delay-ms dropped: no batching across requests",
        "serve/heke_serve/cli.py",
        "        batch_delay_s=batch_delay_ms / 1000,\n",
        "        batch_delay_s=0.0,\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-symlink-escape",
        "--allow-path checked without following symlinks",
        "serve/heke_serve/app.py",
        "    real = Path(os.path.realpath(given))\n",
        "    real = Path(os.path.abspath(given))\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-upload-kept",
        "an upload's temporary file is never deleted",
        "serve/heke_serve/uploads.py",
        "            self.path.unlink(missing_ok=True)\n",
        "            pass\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-streamed-limit",
        "a chunked upload (no Content-Length) passes --max-upload-mb",
        "serve/heke_serve/uploads.py",
        "        if self.written > self.limit:\n",
        "        if False:\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-snippets-dropped",
        "heke-serve's ?snippets= never reaches the decoder",
        "serve/heke_serve/app.py",
        "                scored = await state.service.score(video.path, video.name, count)\n",
        "                scored = await state.service.score(video.path, video.name, None)\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-drain-none",
        "SIGTERM stops at once: requests in flight are cut off",
        "serve/heke_serve/cli.py",
        "        if self.state.draining:\n",
        "        if True:\n",
        SERVE_TESTS,
    ),
    Bug(
        "live-close-fails",
        "an RTMP stream that ends (the server closes: FFmpeg's I/O error) fails the video",
        "runtime/heke_runtime/sources.py",
        "        if exc.errno not in _CLOSED or not copied or _is_playlist(url):\n",
        "        if True:\n",
        LIVE_TESTS,
    ),
    Bug(
        "rtsp-unstamped-dropped",
        "RTSP's first packets, which come without timestamps, dropped (the keyframe with them)",
        "runtime/heke_runtime/sources.py",
        "            if not packet.size:\n",
        "            if packet.dts is None:\n",
        LIVE_TESTS,
    ),
    Bug(
        "stream-seconds-dropped",
        "heke-run --stream-seconds never reaches the stream's copy",
        "runtime/heke_runtime/scorer.py",
        "            stream_s=self.stream_seconds,\n",
        "            stream_s=None,\n",
        LIVE_TESTS,
    ),
    Bug(
        "copy-deadline-dropped",
        "heke-run --timeout gives up on an endless stream, but its copy goes on until the run ends",
        "runtime/heke_runtime/scorer.py",
        "            deadline_s=self.timeout,\n",
        "            deadline_s=None,\n",
        LIVE_TESTS,
    ),
    Bug(
        "corpus-copy-deadline-dropped",
        "heke-corpus --timeout gives up on an endless URL, but its copy goes on in the worker",
        "corpus/heke_corpus/pipeline.py",
        "sums_only=True, deadline_s=limit, **how",
        "sums_only=True, **how",
        ("tests/test_corpus_pipeline.py",),
    ),
    Bug(
        "serve-engine-failure-raises",
        "an engine failing on one video is an unhandled error, not that video's 500 and record",
        "serve/heke_serve/service.py",
        "        except Exception as exc:  # the engine's fault, not the input's\n",
        "        except KeyError as exc:  # the engine's fault, not the input's\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-drain-deadline-ignored",
        "SIGTERM's drain waits for work in flight past --drain-timeout",
        "serve/heke_serve/cli.py",
        "        deadline = time.monotonic() + self.drain_s\n",
        "        deadline = time.monotonic() * self.drain_s\n",
        SERVE_TESTS,
    ),
    Bug(
        "serve-ray-regressor-dropped",
        "heke-serve --ray scores without the --regressor it was given",
        "serve/heke_serve/cli.py",
        "            str(regressor.resolve()) if regressor else None,\n",
        "            None,\n",
        SERVE_RAY_CLI,
    ),
    Bug(
        "serve-ray-decode-workers",
        "heke-serve --ray gives each replica 2 decoding threads, not the 1 its help states",
        "serve/heke_serve/cli.py",
        "(1 if ray else default_workers())",
        "(2 if ray else default_workers())",
        SERVE_RAY_CLI,
    ),
)


def copy_tree(dest: Path) -> Path:
    """The working tree as git sees it (no .venv, no build output), plus ../shared beside it."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    repo = dest / "repo"
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            target = repo / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    shared = REPO.parent / "shared"
    link = dest / "shared"  # the tests find the authors' reference outputs at ../shared/reference
    if shared.is_dir() and not link.is_symlink():
        link.symlink_to(shared.resolve(), target_is_directory=True)
    return repo


def plant(repo: Path, bug: Bug) -> None:
    path = repo / bug.file
    text = path.read_text()
    count = text.count(bug.old)
    if count != 1:
        raise SystemExit(f"plant_bugs: {bug.name}: the edit matches {count} places in {bug.file}")
    path.write_text(text.replace(bug.old, bug.new))


def environment(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(repo / folder) for folder in PACKAGE_FOLDERS]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def imports_the_copy(repo: Path, bug: Bug) -> bool:
    """Whether the planted module is the copy's (not the editable install's)."""
    module = Path(bug.file).with_suffix("").as_posix().split("/", 1)[1].replace("/", ".")
    probe = f"import {module} as m; print(m.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=repo,
        env=environment(repo),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(found).resolve() == (repo / bug.file).resolve()


def run_tests(repo: Path, tests: tuple[str, ...], *, first_failure: bool) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests]
    if first_failure:
        command.append("-x")
    done = subprocess.run(command, cwd=repo, env=environment(repo), capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def failed_tests(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("FAILED ")]


def hung_test(output: str) -> str | None:
    """The test pytest-timeout stopped (it ends the run at once, with no FAILED line: its
    report dumps the stacks, the test's frame among them), or None."""
    if "+ Timeout +" not in output:
        return None
    frame = re.search(r'File "[^"]*?(tests/\w+\.py)", line \d+, in (test_\w+)', output)
    return f"{frame[1]}::{frame[2]}" if frame else "a test"


def baseline(bugs: list[Bug]) -> bool:
    tests = tuple(sorted({t for bug in bugs for t in bug.tests}))
    with tempfile.TemporaryDirectory(prefix="heke-plant-") as scratch:
        repo = copy_tree(Path(scratch))
        code, output = run_tests(repo, tests, first_failure=False)
    if code != 0:
        print(f"baseline (no bug planted) FAILS on {' '.join(tests)}:")
        print("\n".join(output.splitlines()[-30:]))
        return False
    print(f"baseline: {' '.join(tests)} pass unmodified")
    return True


def try_bug(bug: Bug) -> bool:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="heke-plant-") as scratch:
        repo = copy_tree(Path(scratch))
        plant(repo, bug)
        if not imports_the_copy(repo, bug):
            raise SystemExit(f"plant_bugs: {bug.name}: the tests would not import the copy")
        code, output = run_tests(repo, bug.tests, first_failure=True)
    seconds = time.perf_counter() - started
    failed = failed_tests(output)
    if code == 1 and failed:
        print(f"CAUGHT   {bug.name:22} by {failed[0]} ({seconds:.0f} s)")
        return True
    if code == 1 and (hung := hung_test(output)):
        print(f"CAUGHT   {bug.name:22} by {hung}, which hung past its timeout ({seconds:.0f} s)")
        return True
    if code not in (0, 1):
        print(f"ERROR    {bug.name:22} pytest exit {code} ({seconds:.0f} s):")
        print("\n".join(output.splitlines()[-15:]))
        return False
    if " passed" not in output.splitlines()[-1]:  # every test skipped: nothing was checked
        print(f"UNTESTED {bug.name:22} its tests skip here: {output.splitlines()[-1]}")
        return False
    print(f"SURVIVED {bug.name:22} {bug.what}; {' '.join(bug.tests)} pass ({seconds:.0f} s)")
    return False


def chosen(parser: argparse.ArgumentParser, names: list[str], items: tuple[T, ...]) -> list[T]:
    """The ``items`` named (all when none is), or a usage error naming the unknown ones."""
    unknown = set(names) - {item.name for item in items}  # type: ignore[attr-defined]
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    return [item for item in items if not names or item.name in names]  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="Bugs to plant (default: all).")
    parser.add_argument("--list", action="store_true", help="List the bugs and exit.")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the unmodified run.")
    args = parser.parse_args(argv)
    if args.list:
        for bug in BUGS:
            print(f"{bug.name:22} {bug.what} ({bug.file}; {' '.join(bug.tests)})")
        return 0
    bugs = chosen(parser, args.names, BUGS)
    if not args.no_baseline and not baseline(bugs):
        return 2
    caught = [try_bug(bug) for bug in bugs]
    print(f"{sum(caught)} of {len(bugs)} planted bugs caught")
    return 0 if all(caught) else 1


if __name__ == "__main__":
    sys.exit(main())
