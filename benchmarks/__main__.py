"""delfx benchmarks: `python -m benchmarks [run|report] ...`.

    python -m benchmarks --quick                      # every stage, CI sizes (10-20 min on 2 cores)
    python -m benchmarks --out bench-results          # the full report run (1.5-2.5 hours on 2 cores)
    python -m benchmarks --stages extract,roofline    # some stages only
    python -m benchmarks report bench-results --markdown docs/benchmarks.md
                                                      # re-render a report from saved results
    python -m benchmarks import local_features out.json --out bench-results --command ... --note ...
                                                      # adopt a result run outside the suite

Tables go to stdout as stages finish, progress to stderr. The results folder holds one JSON per
stage (stable keys, with the machine facts), suite.json, report.md and the PNG plots.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.report import report_problems, write_report
from benchmarks.suite import STAGE_NAMES, import_result, run_suite, select_stages


def _stages(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        parser = argparse.ArgumentParser(prog="python -m benchmarks report",
                                         description="Render report.md and plots from saved results.")
        parser.add_argument("results", type=Path, help="a results folder of `python -m benchmarks`")
        parser.add_argument("--markdown", type=Path, help="write the report here too "
                            "(e.g. docs/benchmarks.md); its plots are copied next to it")
        args = parser.parse_args(argv[1:])
        path = write_report(args.results, args.markdown)
        print(f"report: {path}", file=sys.stderr)
        return 1 if report_problems(args.results) else 0
    if argv and argv[0] == "import":
        parser = argparse.ArgumentParser(prog="python -m benchmarks import",
                                         description="Adopt a stage result produced outside the suite.")
        parser.add_argument("stage", choices=STAGE_NAMES)
        parser.add_argument("json", type=Path, help="the stage module's --json output")
        parser.add_argument("--out", type=Path, required=True, help="results folder")
        parser.add_argument("--command", required=True, help="the command that produced it")
        parser.add_argument("--note", required=True, help="which code made it (branch, commit)")
        args = parser.parse_args(argv[1:])
        import_result(select_stages([args.stage])[0], args.json, args.out, args.command, args.note)
        return 0
    if argv and argv[0] == "run":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI sizes: every stage in minutes")
    parser.add_argument("--stages", type=_stages, default=None,
                        help=f"comma-separated subset of: {','.join(STAGE_NAMES)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default: bench-results/<date>-<quick|full>)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the report here (e.g. docs/benchmarks.md)")
    args = parser.parse_args(argv)
    stages = select_stages(args.stages)
    out = args.out or Path("bench-results") / time.strftime(
        f"%Y%m%d-%H%M%S-{'quick' if args.quick else 'full'}")
    suite = run_suite(stages, args.quick, out)
    path = write_report(out, args.markdown)
    print(f"\nreport: {path}", file=sys.stderr)
    problems = report_problems(out)
    if problems:
        print("problems: " + "; ".join(problems) + f" (see the .log files in {out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
