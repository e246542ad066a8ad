"""Turn a sweep's results table into its page: statistics over seeds, a markdown table and the figure.

    python scripts/report.py experiments/results/NAME [--config experiments/ablations/NAME.py]

Writes experiments/results/NAME/README.md and NAME.png/.svg (adapters_jax/sweeps/report.py says what
they hold; the config's REPORT dict says what to plot). Exit status 2 with one `error:` line on bad input.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results .jsonl file or the directory holding results.jsonl")
    p.add_argument("--config", default=None, help="the sweep's config file (default: found by the sweep's name)")
    p.add_argument("--workdir", default=None, help="the runs' directories, for a config's analyze() "
                                                   "(default runs/sweeps/NAME)")
    a = p.parse_args(argv)
    from adapters_jax.errors import AdaptersJaxError
    from adapters_jax.sweeps import report

    try:
        page = report.write_report(a.results, a.config, a.workdir)
    except AdaptersJaxError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
