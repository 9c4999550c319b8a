"""Subprocess side of the resume tests: reopen a saved session and continue it.

Usage: python -m tests.runtime.resume_worker MODEL_DIR HOME DB_URL NAME OUT_JSON MODE
MODE "greedy" or "sample": generate 8 tokens after prefilling [7, 8, 9].
"""

from __future__ import annotations

import json
import sys

from agentrt import Engine


def main() -> None:
    """Open the session in a fresh engine, continue, and write the tokens and logits."""
    model_dir, home, db, name, out, mode = sys.argv[1:7]
    eng = Engine.from_pretrained(
        model_dir, device="cpu", num_blocks=2000, block_size=8, home=home, db=db
    )
    s = eng.open_session(name)
    logits = s.prefill([7, 8, 9])
    sampling = {"temperature": 0.9, "top_p": 0.95} if mode == "sample" else {}
    tokens = list(s.generate(8, **sampling))
    with open(out, "w") as fh:
        json.dump({"tokens": tokens, "logits": logits.tolist()}, fh)
    eng.close()


if __name__ == "__main__":
    main()
