"""A fresh process that loads the model and times its first `open_session` (resume suite).

Run as `python -m agentrt.bench.resume_child '<json>'` with keys path, adapters, dms
("on"|"off"), device, home, name, kv_budget, kv_dtype and prefetch; prints one JSON line
{"open_seconds", "tokens"}. With prefetch the catalog's modules are imported on a thread
while the weights load, as `Engine.from_pretrained` (so every CLI command) does; without
it the first `open_session` pays that import too.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    """Load, then time the restore of session `name` from `home`."""
    args = json.loads(argv[0])
    import torch

    from agentrt.dms import load_model
    from agentrt.engine import Engine
    from agentrt.engine.persistence import prefetch_catalog
    from agentrt.models.resolve import load_resolved

    if args.get("prefetch", True):
        prefetch_catalog()

    device = torch.device(args["device"])
    if args["adapters"]:
        model = load_model(args["path"], adapters=args["adapters"], device=device)
    else:
        model = load_resolved(args["path"], dms=args["dms"], device=device, progress=False)
    home = args["home"]
    eng = Engine(
        model,
        kv_budget=args["kv_budget"],
        kv_dtype=args.get("kv_dtype"),
        home=home,
        db=f"sqlite:///{home}/b.db",
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    s = eng.open_session(args["name"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    print(json.dumps({"open_seconds": seconds, "tokens": len(s.tokens)}))
    eng.close()


if __name__ == "__main__":
    main(sys.argv[1:])
