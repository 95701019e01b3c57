"""Extract the v1 openAPIV3Schema of KubeRay's CRDs into cluster/kuberay/crd-schemas/ (see the README there).

    python scripts/vendor_kuberay_schemas.py CRD_DIR    # CRD_DIR = kuberay's helm-chart/kuberay-operator/crds

Field descriptions are dropped (they are most of the bytes and play no part in validation); everything else is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "cluster" / "kuberay" / "crd-schemas"
KINDS = {"rayclusters": "RayCluster", "rayjobs": "RayJob", "rayservices": "RayService"}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(crd_dir: str) -> None:
    for plural, kind in KINDS.items():
        crd = yaml.load((Path(crd_dir) / f"ray.io_{plural}.yaml").read_text(), Loader=yaml.CSafeLoader)
        assert crd["spec"]["names"]["kind"] == kind, crd["spec"]["names"]
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strip(v1["schema"]["openAPIV3Schema"])
        (OUT / f"{kind.lower()}-v1.json").write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{kind}: {len(json.dumps(schema))} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
