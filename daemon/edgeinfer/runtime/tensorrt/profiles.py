"""Optimization profiles: the min/opt/max shapes an engine is built for.

Pure Python (no TensorRT), so the policy is testable anywhere. The builder turns the
result into IOptimizationProfile objects; the cache key holds it, so changing a
profile rebuilds the engine.

Policy when no profile is configured and an input has dynamic dimensions:
- a dynamic batch (dim 0) gets min 1, opt = the largest [batching] preferred batch size
  (or max_batch), max = [batching] max_batch: the engine covers exactly what the batcher
  will ever send, and building for larger batches would cost build time and memory;
- dynamic height/width of the image input (rank 4) come from [input] size and layout;
- any other dynamic dimension cannot be guessed: the message asks for a profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from edgeinfer.runtime.base import TensorSpec


class ProfileError(ValueError):
    """The configured profiles do not fit the model, or a default cannot be derived."""


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def as_list(self) -> list[list[int]]:
        return [list(self.min), list(self.opt), list(self.max)]


# One profile: input name -> shape range (only inputs with a dynamic dimension).
Profile = dict[str, ShapeRange]


@dataclass(frozen=True)
class ProfileDefaults:
    """What the default profile is derived from (filled from the model config)."""

    max_batch: int = 1
    opt_batch: Optional[int] = None
    image_input: Optional[str] = None    # name of the image input ("" = first input)
    image_size: tuple[int, int] = (224, 224)  # (width, height)
    layout: str = "NCHW"

    @classmethod
    def from_model(cls, model) -> "ProfileDefaults":
        """Read [batching] and [input] of a config.ModelConfig."""
        b = model.batching
        opt = max(b.preferred_batch_sizes) if b.preferred_batch_sizes else None
        return cls(max_batch=b.max_batch, opt_batch=opt, image_input=model.input.tensor or None,
                   image_size=(model.input.size[0], model.input.size[1]), layout=model.input.layout)


def _dynamic(spec: TensorSpec) -> bool:
    return any(d < 0 for d in spec.shape)


def default_range(spec: TensorSpec, defaults: ProfileDefaults, is_image: bool) -> tuple[ShapeRange, str]:
    """Default min/opt/max for one dynamic input, and a sentence saying how it was chosen."""
    lo, opt, hi = list(spec.shape), list(spec.shape), list(spec.shape)
    notes = []
    for axis, dim in enumerate(spec.shape):
        if dim >= 0:
            continue
        if axis == 0:
            max_b = max(1, defaults.max_batch)
            opt_b = min(max(1, defaults.opt_batch or max_b), max_b)
            lo[0], opt[0], hi[0] = 1, opt_b, max_b
            notes.append(f"batch {1}/{opt_b}/{max_b} from [batching] max_batch={defaults.max_batch}")
            continue
        if is_image and len(spec.shape) == 4:
            w, h = defaults.image_size
            hw_axes = {1: h, 2: w} if defaults.layout == "NHWC" else {2: h, 3: w}
            if axis in hw_axes:
                lo[axis] = opt[axis] = hi[axis] = hw_axes[axis]
                notes.append(f"dim {axis} = {hw_axes[axis]} from [input] size")
                continue
        raise ProfileError(
            f"input {spec.name!r} has dynamic dimension {axis} (shape {list(spec.shape)}) that cannot be "
            f"guessed; add [[models.<name>.tensorrt.profiles]] with min/opt/max for {spec.name!r}")
    return ShapeRange(tuple(lo), tuple(opt), tuple(hi)), "; ".join(notes)


def _check_against_spec(spec: TensorSpec, rng: ShapeRange, where: str) -> None:
    for label, shape in (("min", rng.min), ("opt", rng.opt), ("max", rng.max)):
        if len(shape) != len(spec.shape):
            raise ProfileError(f"{where}: {label} shape {list(shape)} for {spec.name!r} has rank {len(shape)}, "
                               f"the model input has rank {len(spec.shape)} ({list(spec.shape)})")
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if want >= 0 and want != got:
                raise ProfileError(f"{where}: {label} shape {list(shape)} for {spec.name!r} differs from the "
                                   f"model's fixed dimension {axis} = {want}")
            if got < 1:
                raise ProfileError(f"{where}: {label} shape {list(shape)} for {spec.name!r} has a dimension < 1")
    if not all(a <= o <= x for a, o, x in zip(rng.min, rng.opt, rng.max)):
        raise ProfileError(f"{where}: {spec.name!r} needs min <= opt <= max in every dimension, "
                           f"got {rng.as_list()}")


def derive_profiles(inputs: Sequence[TensorSpec], configured: Sequence, defaults: ProfileDefaults
                    ) -> tuple[list[Profile], list[str]]:
    """Effective optimization profiles for a model.

    Args:
        inputs: the network inputs (-1 = dynamic dimension).
        configured: config.ProfileConfig objects (min/opt/max dicts of name -> shape).
        defaults: where default shapes come from.

    Returns:
        (profiles, notes). No profile at all when every input is static. Notes are
        human sentences saying which shapes were defaulted, for the log.

    Raises:
        ProfileError: a configured profile names an unknown input or does not fit it, or a
            dynamic dimension has no configured shape and no sensible default.
    """
    specs = {s.name: s for s in inputs}
    dynamic = [s for s in inputs if _dynamic(s)]
    image_name = defaults.image_input or (inputs[0].name if inputs else None)
    notes: list[str] = []
    if not configured:
        if not dynamic:
            return [], notes
        profile: Profile = {}
        for spec in dynamic:
            profile[spec.name], how = default_range(spec, defaults, spec.name == image_name)
            notes.append(f"no [tensorrt.profiles] configured: input {spec.name!r} uses {how}")
        return [profile], notes
    profiles: list[Profile] = []
    for i, prof in enumerate(configured):
        where = f"[tensorrt.profiles][{i}]"
        names = set(prof.min) | set(prof.opt) | set(prof.max)
        unknown = sorted(names - set(specs))
        if unknown:
            raise ProfileError(f"{where} names unknown input(s) {unknown}; the model takes {sorted(specs)}")
        profile = {}
        for name in sorted(names):
            if name not in prof.min or name not in prof.opt or name not in prof.max:
                raise ProfileError(f"{where}: {name!r} needs min, opt and max shapes")
            rng = ShapeRange(tuple(prof.min[name]), tuple(prof.opt[name]), tuple(prof.max[name]))
            _check_against_spec(specs[name], rng, where)
            if _dynamic(specs[name]):
                profile[name] = rng  # a static input needs no range; a matching one is accepted
        for spec in dynamic:
            if spec.name not in profile:
                profile[spec.name], how = default_range(spec, defaults, spec.name == image_name)
                notes.append(f"{where} does not name input {spec.name!r}; it uses {how}")
        profiles.append(profile)
    return profiles, notes


def profiles_to_json(profiles: Sequence[Profile]) -> list[dict[str, list[list[int]]]]:
    """JSON form (for the cache key and the manifest): [{name: [min, opt, max]}]."""
    return [{name: rng.as_list() for name, rng in sorted(p.items())} for p in profiles]


def max_batch_of(profiles: Sequence[Profile], inputs: Sequence[TensorSpec]) -> Optional[int]:
    """Largest batch every dynamic-batch input accepts in some profile; None if no batch axis."""
    batch_inputs = [s for s in inputs if s.dynamic_batch]
    if not batch_inputs:
        fixed = {s.shape[0] for s in inputs if s.shape}
        return next(iter(fixed)) if len(fixed) == 1 else None
    best = 0
    for p in profiles:
        if all(s.name in p for s in batch_inputs):
            best = max(best, min(p[s.name].max[0] for s in batch_inputs))
    return best or None


def select_profile(profiles: Sequence[Mapping[str, ShapeRange]], shapes: Mapping[str, Sequence[int]]
                   ) -> Optional[int]:
    """Index of the first profile whose ranges contain every given input shape, or None."""
    for i, p in enumerate(profiles):
        if all(name not in p or p[name].contains(shape) for name, shape in shapes.items()):
            return i
    return None
