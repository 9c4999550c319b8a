"""Every `agentrt bench` suite in one go, at a preset size, into one folder.

    python -m agentrt.bench.run_all --preset gpu --out bench-gpu            # reduced GPU sizes
    python -m agentrt.bench.run_all --preset cpu --adapters DIR --out out    # modest CPU sizes
    python -m agentrt.bench.run_all --preset smoke --model DIR --device cpu  # tiny, seconds

Extra arguments (--model, --adapters, --device) go to every suite. Prints the seconds each
suite took; each suite writes its own JSON, Markdown and PNG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

_CLI = "import sys; from agentrt.cli import main; sys.argv[0] = 'agentrt'; main()"

PRESETS: dict[str, list[list[str]]] = {
    # the reduced GPU run: every suite, sized to finish in a few minutes on one H100
    "gpu": [
        ["memory", "--contexts", "4096,32768,131072"],
        ["prefill", "--lengths", "2048,8192", "--repeats", "3"],
        ["decode", "--sessions", "1,8,32", "--context", "8192", "--steps", "32", "--repeats", "3"],
        ["resume", "--lengths", "1024,4096,8192", "--repeats", "3"],
        ["multiturn", "--turns", "50", "--user-tokens", "48", "--answer-tokens", "16"],
    ],
    # modest sizes for a 2-core CPU (a quiet one: each suite takes minutes to an hour)
    "cpu": [
        ["resume", "--lengths", "1024,4096", "--repeats", "2"],
        ["decode", "--sessions", "1,4", "--context", "512", "--steps", "8", "--repeats", "3"],
        ["prefill", "--lengths", "1024,2048", "--repeats", "2"],
        ["multiturn", "--turns", "50", "--user-tokens", "24", "--answer-tokens", "8"],
        ["memory", "--contexts", "1024,2048,4096"],
    ],
    # every suite in seconds on a tiny model (the test suite runs this)
    "smoke": [
        ["memory", "--contexts", "24,48", "--budget", "1MiB"],
        ["prefill", "--lengths", "16", "--repeats", "1", "--warmup", "0"],
        ["decode", "--sessions", "1,2", "--context", "8", "--steps", "2", "--repeats", "1"],
        ["resume", "--lengths", "16", "--repeats", "1", "--warmup", "0", "--no-new-process"],
        ["multiturn", "--turns", "3", "--user-tokens", "4", "--answer-tokens", "2"],
    ],
}


def main(argv: list[str] | None = None) -> int:
    """Run the preset's suites in order; returns the exit code of the first that fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    parser.add_argument("--out", default="bench-out")
    args, extra = parser.parse_known_args(argv)
    for suite in PRESETS[args.preset]:
        t0 = time.perf_counter()
        # each suite is its own `agentrt bench` process (the library never imports the CLI);
        # a failing suite has printed its error there
        command = [sys.executable, "-c", _CLI, "bench", *suite, *extra, "--out", args.out]
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            return code
        print(f"{suite[0]}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
