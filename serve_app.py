"""`serve run serve_app:app`: the chat service on its own (no learner attached; it follows weights if a loop runs).

Config from the YAML file in $HSD_RAY_CONFIG (optional) and dotted overrides in $HSD_RAY_OVERRIDES, space separated,
e.g. HSD_RAY_OVERRIDES="model=tiny-random serve.replicas=2".
"""

import os

from hsd_ray.config import Config
from hsd_ray.loop.serve import build_app

app = build_app(Config.load(os.environ.get("HSD_RAY_CONFIG") or None, os.environ.get("HSD_RAY_OVERRIDES", "").split()))
