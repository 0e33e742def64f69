"""Mutation testing (cosmic-ray) of the modules where a wrong option or a leak is silent.

Too slow for every CI run (one test run per mutant), so a script: for each target it copies
the working tree (as scripts/plant_bugs.py does) to ``--out/<target>/repo``, lets cosmic-ray
mutate the target's modules there one mutant at a time and run the target's tests, and writes
the report (every surviving mutant with its diff) to ``--out/<target>/report.txt``. The
session is kept: running the same command again resumes where it stopped (``--fresh`` starts
over from a new copy; ``--recheck`` runs the survivors again after the tests changed, and a
module changed since the session gets its mutants anew, keeping the kills on the lines the
change left alone).
docs/MUTATION.md holds the scores and the survivors we accepted, each with its reason.

    pip install -e '.[mutation]'
    .venv/bin/python scripts/mutation.py --list
    .venv/bin/python scripts/mutation.py run-cli splits      # some targets
    .venv/bin/python scripts/mutation.py                     # all of them (hours on 2 cores)

Operators: cosmic-ray's core set, less the binary-operator swaps into bit, power, modulo and
floor-division operators (ten variants of every ``+`` that say nothing the ``+`` -> ``-``
swap does not). Lines marked ``# pragma: no mutate`` are skipped; each such mark carries its
reason beside it.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plant_bugs import REPO, chosen, copy_tree, environment

BIN = Path(sys.executable).parent
UNTELLING = r"(Pow|RShift|LShift|BitOr|BitAnd|BitXor|FloorDiv|Mod)"
EXCLUDED = (
    rf"core/ReplaceBinaryOperator_\w+_{UNTELLING}$",
    rf"core/ReplaceBinaryOperator_{UNTELLING}_\w+$",
)
TIMEOUT_S = 180  # a mutant whose tests run longer has made something hang: "killed"


@dataclass(frozen=True)
class Target:
    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # only mutants inside these definitions (default: all)


# Which videos train and which epoch is kept, in heke_finetune.train: where a leak is silent.
TRAINING_CHOICES = (
    *("prepare", "rows", "part", "train_regressor", "_train", "_check_training"),
    *("update", "result", "intra_dataset", "cross_dataset", "fit", "export_regressor"),
)

TARGETS = (
    Target(
        "run-cli",
        ("runtime/heke_runtime/cli.py",),
        (
            "tests/test_cli_run.py",
            "tests/test_run_outputs.py",
            "tests/test_sources_live.py::test_stream_seconds_must_be_positive",
        ),
    ),
    Target("corpus-cli", ("corpus/heke_corpus/cli.py",), ("tests/test_corpus_cli.py",)),
    Target(
        "serve",
        ("serve/heke_serve/cli.py", "serve/heke_serve/service.py", "serve/heke_serve/uploads.py"),
        ("tests/test_serve_cli.py", "tests/test_serve.py"),
    ),
    Target(
        "scorer",
        ("runtime/heke_runtime/scorer.py",),
        ("tests/test_scorer.py", "tests/test_scorer_records.py", "tests/test_cli_run.py"),
    ),
    Target("splits", ("finetune/heke_finetune/splits.py",), ("tests/test_finetune.py",)),
    Target(
        "train",
        ("finetune/heke_finetune/train.py",),
        ("tests/test_finetune.py",),
        TRAINING_CHOICES,
    ),
    Target(
        "regressor",
        ("runtime/heke_runtime/regressor.py",),
        ("tests/test_regressor.py", "tests/test_finetune.py"),
    ),
)


def config_text(target: Target) -> str:
    tests = " ".join(target.tests)
    command = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {tests}"
    modules = ", ".join(f'"{m}"' for m in target.modules)
    excluded = ", ".join(f"'{e}'" for e in EXCLUDED)
    return (
        "[cosmic-ray]\n"
        f"module-path = [{modules}]\n"
        f"timeout = {TIMEOUT_S}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n\n'
        '[cosmic-ray.distributor]\nname = "local"\n\n'
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = [{excluded}]\n"
    )


def cosmic(repo: Path, *args: str, capture: bool = False) -> str:
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=repo,
        env=environment(repo),
        check=True,
        capture_output=capture,
        text=True,
    )
    return done.stdout if capture else ""


def recheck(target: Target, folder: Path) -> None:
    """Runs the survivors again against the checkout's current tests: refreshes the copy and
    forgets the survivors' results, so that ``exec`` runs them again. A module changed since
    the session gets its mutants anew (``renew``), keeping the kills of those on lines that
    did not change."""
    pristine = folder / "pristine"
    changed = [m for m in target.modules if (REPO / m).read_bytes() != (pristine / m).read_bytes()]
    repo = copy_tree(folder)
    for module in changed:
        renew(target, folder, repo, module)
        shutil.copyfile(repo / module, pristine / module)
    (repo / "cosmic-ray.toml").write_text(config_text(target))  # today's tests of the target
    with sqlite3.connect(folder / "session.sqlite") as db:
        db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")


SPEC = "operator_name, operator_args, start_pos_row, start_pos_col, end_pos_row, end_pos_col"
SPEC_COLUMNS = len(SPEC.split(","))


def renew(target: Target, folder: Path, repo: Path, module: str) -> None:
    """Replaces a changed module's mutants in the session with those of its current text. A
    new mutant equal to an old one killed (same operator at the same text, on lines the change
    left alone) keeps its kill; every other one is run."""
    old = (folder / "pristine" / module).read_text().splitlines()
    new = (repo / module).read_text().splitlines()
    moved = {}  # old line number -> new line number, for the lines the change left alone
    for block in difflib.SequenceMatcher(None, old, new, autojunk=False).get_matching_blocks():
        moved.update({block.a + k + 1: block.b + k + 1 for k in range(block.size)})
    fresh = folder / "renew.sqlite"
    fresh.unlink(missing_ok=True)
    (repo / "renew.toml").write_text(config_text(Target("renew", (module,), target.tests)))
    cosmic(repo, "cosmic-ray", "init", "renew.toml", str(fresh))
    cosmic(repo, "cr-filter-operators", str(fresh), "renew.toml")
    cosmic(repo, "cr-filter-pragma", str(fresh))
    db = sqlite3.connect(folder / "session.sqlite", isolation_level=None)  # ATTACH: no transaction
    db.execute("ATTACH DATABASE ? AS fresh", (str(fresh),))
    with db:
        db.execute("BEGIN")
        # Every mutant of the module with its result (None: not run), in "occurrence" order,
        # which ranks the mutants at the same text with the same operator (a number +1, -1).
        old = db.execute(
            f"SELECT {SPEC}, worker_outcome, output, test_outcome, diff FROM mutation_specs "
            "LEFT JOIN work_results USING (job_id) WHERE module_path = ? ORDER BY occurrence",
            (module,),
        ).fetchall()
        kills = {}
        for (name, args, row, col, end_row, end_col, rank), result in ranked(old):
            if result[2] == "KILLED" and all(line in moved for line in range(row, end_row + 1)):
                kills[(name, args, moved[row], col, moved[end_row], end_col, rank)] = result
        jobs = "SELECT job_id FROM mutation_specs WHERE module_path = ?"
        db.execute(f"DELETE FROM work_results WHERE job_id IN ({jobs})", (module,))
        db.execute(f"DELETE FROM work_items WHERE job_id IN ({jobs})", (module,))
        db.execute("DELETE FROM mutation_specs WHERE module_path = ?", (module,))
        for table in ("work_items", "mutation_specs", "work_results"):
            db.execute(f"INSERT INTO {table} SELECT * FROM fresh.{table}")
        new = db.execute(
            f"SELECT {SPEC}, job_id, job_id NOT IN (SELECT job_id FROM fresh.work_results) "
            "FROM fresh.mutation_specs ORDER BY occurrence"
        ).fetchall()
        kept = [
            (*kills[spec], job) for spec, (job, unrun) in ranked(new) if unrun and spec in kills
        ]
        db.executemany(
            "INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
            "VALUES (?, ?, ?, ?, ?)",
            kept,
        )
    db.close()
    fresh.unlink()
    print(f"== {module} changed: {len(kept)} kills kept, the rest of its mutants anew")


def ranked(rows: Iterable[Sequence[Any]]) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """For rows of SPEC then other columns: (SPEC with its rank among equal SPECs, the other
    columns)."""
    seen: Counter[tuple[Any, ...]] = Counter()
    for row in rows:
        spec, rest = tuple(row[:SPEC_COLUMNS]), tuple(row[SPEC_COLUMNS:])
        seen[spec] += 1
        yield (*spec, seen[spec]), rest


def prepare(target: Target, folder: Path, fresh: bool, again: bool) -> Path:
    """The target's copy and session: new, as a previous run left it, or with its survivors
    to run again (``again``)."""
    repo = folder / "repo"
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if (folder / "session.sqlite").is_file():
        if again:
            recheck(target, folder)
        for module in target.modules:  # a run killed mid-mutant leaves that mutant on disk
            shutil.copyfile(folder / "pristine" / module, repo / module)
        return repo
    folder.mkdir(parents=True, exist_ok=True)
    copy_tree(folder)  # writes folder/repo (and folder/shared for the reference data)
    for module in target.modules:  # what the session's mutants were recorded against
        (folder / "pristine" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / module, folder / "pristine" / module)
    (repo / "cosmic-ray.toml").write_text(config_text(target))
    cosmic(repo, "cosmic-ray", "init", "cosmic-ray.toml", "../session.sqlite")
    cosmic(repo, "cr-filter-operators", "../session.sqlite", "cosmic-ray.toml")
    cosmic(repo, "cr-filter-pragma", "../session.sqlite")
    if target.functions:
        skip_outside(folder / "session.sqlite", target.functions)
    return repo


def skip_outside(session: Path, functions: tuple[str, ...]) -> None:
    """Marks mutants outside ``functions`` skipped, as cosmic-ray's own filters do."""
    marks = ",".join("?" * len(functions))
    with sqlite3.connect(session) as db:
        db.execute(
            "INSERT INTO work_results (worker_outcome, output, job_id) "
            "SELECT 'SKIPPED', 'outside the functions of this target', job_id "
            "FROM mutation_specs WHERE job_id NOT IN (SELECT job_id FROM work_results) "
            f"AND (definition_name IS NULL OR definition_name NOT IN ({marks}))",
            functions,
        )


def run_target(target: Target, out: Path, fresh: bool, again: bool) -> None:
    folder = out / target.name
    started = time.perf_counter()
    repo = prepare(target, folder, fresh, again)
    print(f"== {target.name}: {', '.join(target.modules)}; tests {' '.join(target.tests)}")
    cosmic(repo, "cosmic-ray", "exec", "cosmic-ray.toml", "../session.sqlite")
    report = cosmic(repo, "cr-report", "--show-diff", "../session.sqlite", capture=True)
    (folder / "report.txt").write_text(report)
    survivors = cosmic(
        repo, "cr-report", "--surviving-only", "--show-diff", "../session.sqlite", capture=True
    )
    (folder / "survivors.txt").write_text(survivors)
    summary = [line for line in report.splitlines() if ":" in line][-4:]
    print("\n".join(summary))
    print(f"   {time.perf_counter() - started:.0f} s; survivors in {folder / 'survivors.txt'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="Targets (default: all).")
    parser.add_argument("--list", action="store_true", help="List the targets and exit.")
    parser.add_argument("--out", type=Path, default=REPO / "mutation-out", help="Work folder.")
    parser.add_argument("--fresh", action="store_true", help="Start over from a new copy.")
    parser.add_argument(
        "--recheck", action="store_true", help="Run the survivors again with today's tests."
    )
    args = parser.parse_args(argv)
    if args.list:
        for target in TARGETS:
            print(f"{target.name:11} {' '.join(target.modules)}  <- {' '.join(target.tests)}")
        return 0
    targets = chosen(parser, args.names, TARGETS)
    if not (BIN / "cosmic-ray").exists():
        parser.error("cosmic-ray is not installed: pip install -e '.[mutation]'")
    for target in targets:
        run_target(target, args.out.resolve(), args.fresh, args.recheck)
    return 0


if __name__ == "__main__":
    sys.exit(main())
