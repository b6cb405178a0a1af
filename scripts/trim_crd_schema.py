#!/usr/bin/env python3
"""Cut a CustomResourceDefinition's published OpenAPI schema down to what our manifests use.

KServe's CRDs are published in its repository (config/crd/full/): the InferenceService one is
2 MB of YAML, most of it Kubernetes' Pod and Container schemas repeated per component. To
validate deploy/kserve/ offline, tests/deploy/test_manifests.py reads a trimmed copy kept in
deploy/kserve/schemas/: every object on the path of a field our manifests set keeps its full
schema for that field and the NAMES of all its other fields (their schemas become `{}`, any
value), and objects refuse unknown fields (as `kubectl apply --validate=strict` does). So a
misspelt or misplaced field fails, and so does a wrong type or enum value of a field we set.
Setting a field the trimmed schema does not yet describe deeply: run this script again.

    python scripts/trim_crd_schema.py CRD.yaml --version v1beta1 --source "kserve/kserve@COMMIT ..." \\
        --out deploy/kserve/schemas/inferenceservice-v1beta1.json deploy/kserve/*.yaml
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

KEEP = {"type", "required", "enum", "format", "pattern", "minimum", "maximum", "minItems", "maxItems",
        "minLength", "maxLength", "nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"}


def _to_json_schema(node: dict, out: dict) -> dict:
    """OpenAPI v3 (as CRDs write it) to JSON Schema, for the keywords that differ."""
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def trim(schema: dict, instances: list) -> dict:
    out = {k: v for k, v in schema.items() if k in KEEP and k not in ("nullable",)}
    props = schema.get("properties")
    if props is not None:
        dicts = [i for i in instances if isinstance(i, dict)]
        out["properties"] = {}
        for name, sub in props.items():
            used = [d[name] for d in dicts if name in d]
            out["properties"][name] = trim(sub, used) if used else {}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        elements = [e for i in instances if isinstance(i, list) for e in i]
        out["items"] = trim(schema["items"], elements) if elements else {}
    if isinstance(schema.get("additionalProperties"), dict):
        values = [v for i in instances if isinstance(i, dict) for v in i.values()]
        out["additionalProperties"] = trim(schema["additionalProperties"], values) if values else {}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and not schema.get("x-kubernetes-int-or-string"):
            out[key] = [trim(s, instances) for s in schema[key]]
    return _to_json_schema(schema, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("crd", type=Path)
    ap.add_argument("manifests", type=Path, nargs="+")
    ap.add_argument("--version", required=True)
    ap.add_argument("--source", required=True, help="where the CRD came from (repository@commit path)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    crd = yaml.safe_load(args.crd.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == args.version)
    schema = version["schema"]["openAPIV3Schema"]
    api_version = f"{group}/{args.version}"
    instances = [doc for m in args.manifests for doc in yaml.safe_load_all(m.read_text())
                 if doc and doc.get("kind") == kind and doc.get("apiVersion") == api_version]
    if not instances:
        print(f"no {kind} {api_version} in the manifests", file=sys.stderr)
        return 1
    trimmed = trim(schema, instances)
    # apiVersion and kind are fixed; metadata is ObjectMeta, which Kubernetes itself checks.
    trimmed["properties"]["apiVersion"] = {"const": api_version}
    trimmed["properties"]["kind"] = {"const": kind}
    trimmed["properties"]["metadata"] = {"type": "object"}
    trimmed["$comment"] = (f"{kind} {api_version} schema trimmed by scripts/trim_crd_schema.py from "
                           f"{args.source}; fields our manifests do not set keep their names only")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(trimmed, indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: {len(args.out.read_text())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
