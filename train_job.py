"""Run the online self-distillation loop: chat service + capture + teachers + Ray Train learner + broadcast.

    python train_job.py [--config cluster/local.yaml] [--max-steps N] [--duration S] [--source FILE] [section.field=V ...]
    ray job submit --working-dir . -- python train_job.py --config cluster/local.yaml --max-steps 20
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (see cluster/)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument("--source", help="replay logged conversations (.jsonl / .parquet, or a turn log folder) "
                        "instead of live traffic")
    args, overrides = parser.parse_known_args(argv)

    from hsd_ray.config import Config, ConfigError
    from hsd_ray.data.turnlog import is_turn_log

    for flag, key in (("max_steps", "job.max_steps"), ("duration", "job.duration_s"), ("source", "job.source")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    try:
        cfg = Config.load(args.config, overrides)
    except ConfigError as e:
        print(f"train_job.py: {e}", file=sys.stderr)
        return 2
    if cfg.job.source is not None and not (Path(cfg.job.source).is_file() or is_turn_log(cfg.job.source)):
        print(f"train_job.py: job.source: no such file: {cfg.job.source}", file=sys.stderr)
        return 2
    if cfg.job.max_steps is None and cfg.job.duration_s is None and cfg.job.source is None:
        print("train_job.py: runs until Ctrl-C (set --max-steps or --duration to stop by itself)", file=sys.stderr)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from hsd_ray.loop.job import run_job

    summary = run_job(cfg)
    logging.getLogger("hsd_ray.job").info("[job] done: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
