"""Model configuration: the three networks, their working grids and the preprocessing.

The whole configuration travels in the weights header, so training and inference always agree on
HU window, spacing, patch size and network shape. ``paper()`` is the configuration of Qiao, Zhao &
Liu; a bundled set may use reduced widths and a coarser grid, and the pipeline honours whatever the
header says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields


@dataclass
class PreprocessConfig:
    """HU window and normalisation.

    Reading of the paper's "350 HU threshold": the paper says values beyond the threshold are set to
    a constant, which cannot mean that all soft tissue below 350 HU becomes zero (kidney and tumour
    would vanish). We read it as an upper clip at 350 HU (contrast-filled collecting system, bone and
    calcification saturate) with a configurable lower clip, then a linear map of [hu_min, hu_max]
    onto [0, 1].
    """

    hu_min: float = -200.0
    hu_max: float = 350.0


@dataclass
class LocaliserGridConfig:
    """The grid both 2D localisers work on: canonical axial slices at ``spacing_mm`` (x, y, z)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class ZLocaliserConfig:
    """ResNet34-topology slice classifier: kidney present in this axial slice or not."""

    width: int = 64  # channels of the first stage (ResNet34: 64-128-256-512)
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    context_slices: int = 1  # neighbours on each side stacked as channels (1 -> 3 channels)
    threshold: float = 0.5
    smoothing_mm: float = 6.0  # Gaussian smoothing of the per-slice probability along z
    margin_mm: float = 10.0  # added above and below the detected z-range

    @property
    def in_channels(self) -> int:
        return 2 * self.context_slices + 1


@dataclass
class XYLocaliserConfig:
    """2D U-Net on axial slices: a kidney mask from which one box per kidney is taken."""

    width: int = 32
    depth: int = 4  # number of down-samplings
    threshold: float = 0.5
    margin_mm: float = 10.0
    min_component_ml: float = 5.0  # smaller blobs are not kidneys


CONTEXT_FUSIONS = ("mean", "max", "split", "widen")
BEYOND_SCAN = ("air", "edge")


@dataclass
class SegmenterConfig:
    """3D encoder-decoder of multiple-scale residual blocks (MRB)."""

    width: int = 16  # channels at the first level; doubled at every level
    depth: int = 4  # number of resolution levels
    mrb_convs: int = 3  # 3x3x3 convolutions in each block's cascade
    deep_paths: bool = True  # transposed-conv paths from deeper levels into shallower decoders
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    patch_size_xyz: tuple[int, int, int] = (128, 128, 80)
    overlap: float = 0.5
    kidney_threshold: float = 0.5
    tumour_threshold: float = 0.5
    mirror_x: bool = False  # average each window with its left-right mirror (test-time augmentation)
    min_tumour_ml: float = 0.05  # smaller tumour fragments are dropped as speckle
    # A second look at a coarser grid (this many times ``spacing_mm``; 0 = none): the same patch
    # then sees a wider field of view, which a tumour larger than the patch needs. Its probabilities
    # join the fine grid's where both looked (``context_fusion``: "mean", "max", "split": the mean for
    # the region and the maximum for the tumour, or "widen": the mean, with the canvas grown to where
    # the coarse windows looked). docs/evaluation/context_scale/.
    context_scale: float = 0.0
    context_fusion: str = "mean"
    # With a gate (mL; 0 = none) the coarse look runs only when the fine look's region has a part
    # of at least this volume or one touching the canvas's side, and counts only around such parts:
    # elsewhere the fine look, which is right about normal and low-lying kidneys, stands.
    context_gate_ml: float = 0.0
    # A kidney region is kept only if the segmenter's mean region probability over it is at least
    # this (0 = every region): a spleen, liver or bowel loop in an empty renal fossa is segmented
    # with less conviction than a kidney. docs/evaluation/solitary_kidney/.
    min_region_confidence: float = 0.0
    # A kidney region is not kept when both networks doubt it: its mean region probability below
    # ``weak_region_confidence`` and its share inside the xy-localiser's kidney mask below
    # ``weak_region_support`` (0 = off). Either alone also fits kidneys with large tumours (low
    # probability) or leaking regions (low share); an empty renal fossa's organ has both.
    weak_region_confidence: float = 0.0
    weak_region_support: float = 0.0
    # With the body's midline known, at most one kidney region per side, also when only two regions
    # are found (false: the per-side choice applies from three regions on). docs/evaluation/empty_fossa/.
    one_region_per_side: bool = False
    # A kept region whose 5 mm rim is less fat than this share is discarded as not a kidney (0 = off;
    # plausibility.py). Off in v1.6: on held-out phantoms it lost two kidneys displaced into the pelvis,
    # where little fat lies around them. docs/evaluation/fat_rim/.
    min_rim_fat: float = 0.0
    # What the segmenter's windows see past the scan's head or foot end: "air" (as scanners pad)
    # or "edge" (its end slices carried on along its own slice axis, tilted or not, so a kidney the
    # field of view cuts in half still has a body around it; resampling.resample_box's beyond_scan).
    # docs/evaluation/field_of_view/, docs/evaluation/tilted_ends/.
    beyond_scan: str = "air"

    def __post_init__(self):
        # A header written by hand (or by a later version) is refused when loaded, not mid-run.
        if self.context_fusion not in CONTEXT_FUSIONS:
            raise ValueError(f"context_fusion is one of {', '.join(CONTEXT_FUSIONS)}, not {self.context_fusion!r}")
        if self.beyond_scan not in BEYOND_SCAN:
            raise ValueError(f"beyond_scan is one of {', '.join(BEYOND_SCAN)}, not {self.beyond_scan!r}")
        if not self.context_gate_ml >= 0:
            raise ValueError(f"context_gate_ml is a volume in mL, 0 or more, not {self.context_gate_ml!r}")
        if not 0 <= self.min_region_confidence < 1:
            raise ValueError(f"min_region_confidence is a probability in [0, 1), not {self.min_region_confidence!r}")
        for name in ("weak_region_confidence", "weak_region_support", "min_rim_fat"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share in [0, 1], not {getattr(self, name)!r}")

    @property
    def second_look(self) -> bool:
        """Whether the coarser second look runs: ``context_scale`` set, and not the grid itself."""
        return self.context_scale > 0 and self.context_scale != 1.0


# Settings that change what the pipeline does with the networks' outputs, never the networks
# themselves: chosen on validation cases after training and written into a bundle
# (scripts/merge_bundle.py --set); a fine-tune may start from a bundle whose settings differ.
INFERENCE_SETTINGS = frozenset({"threshold", "kidney_threshold", "tumour_threshold", "mirror_x", "min_tumour_ml",
                                "margin_mm", "min_component_ml", "overlap", "context_scale",
                                "context_fusion", "context_gate_ml", "min_region_confidence", "beyond_scan",
                                "weak_region_confidence", "weak_region_support", "one_region_per_side",
                                "min_rim_fat"})
# The inference settings that leave the segmenter's outputs for given boxes unchanged (they act on
# the localisers' boxes or on the post-processing): a sweep over them can reuse those outputs.
REUSABLE_SEGMENTER_SETTINGS = INFERENCE_SETTINGS - {"mirror_x", "overlap", "context_scale", "context_fusion",
                                                     "context_gate_ml", "beyond_scan"}


@dataclass
class ModelConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    localiser_grid: LocaliserGridConfig = field(default_factory=LocaliserGridConfig)
    z_localiser: ZLocaliserConfig = field(default_factory=ZLocaliserConfig)
    xy_localiser: XYLocaliserConfig = field(default_factory=XYLocaliserConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    @classmethod
    def paper(cls) -> ModelConfig:
        """Qiao, Zhao & Liu's configuration: 1 mm everywhere, ResNet34 at full width."""
        return cls()

    @classmethod
    def compact(cls) -> ModelConfig:
        """Reduced widths and coarser grids, trainable on a 2-core CPU within an hour.

        The segmenter's patch (48 x 48 x 32 at 2.5 mm) covers 120 x 120 x 80 mm, close to the paper's
        128 x 128 x 80 mm; width 12 and two convolutions per block make a training step about six
        times cheaper than the paper's network on this patch.
        """
        return cls(
            localiser_grid=LocaliserGridConfig(spacing_mm=(4.0, 4.0, 4.0)),
            z_localiser=ZLocaliserConfig(width=16),
            xy_localiser=XYLocaliserConfig(width=16),
            segmenter=SegmenterConfig(
                width=12, depth=4, mrb_convs=2, spacing_mm=(2.5, 2.5, 2.5), patch_size_xyz=(48, 48, 32)
            ),
        )

    @classmethod
    def bundled(cls) -> ModelConfig:
        """The bundled weights' shape: ``compact()``'s localisers and a finer, wider segmenter.

        2 mm voxels keep a 2 cm tumour 10 voxels wide; the 64 x 64 x 48 patch covers 128 x 128 x
        96 mm, the paper's field of view. Width 16 with two convolutions per block runs a window
        pair in about a second on a 2-core CPU, so a whole scan stays within seconds without a GPU;
        training it needs a GPU (``scripts/train_bundled.py``).
        """
        cfg = cls.compact()
        cfg.segmenter = SegmenterConfig(
            width=16, depth=4, mrb_convs=2, spacing_mm=(2.0, 2.0, 2.0), patch_size_xyz=(64, 64, 48)
        )
        return cfg

    @classmethod
    def tiny(cls) -> ModelConfig:
        """Smallest working shape, for tests: every stage runs in milliseconds."""
        return cls(
            localiser_grid=LocaliserGridConfig(spacing_mm=(6.0, 6.0, 6.0)),
            z_localiser=ZLocaliserConfig(width=4, blocks=(1, 1, 1, 1)),
            xy_localiser=XYLocaliserConfig(width=4, depth=3),
            segmenter=SegmenterConfig(
                width=4, depth=3, mrb_convs=2, spacing_mm=(4.0, 4.0, 4.0), patch_size_xyz=(32, 32, 20)
            ),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def network_shape(self, part: str) -> dict:
        """One section (``segmenter``, ...) without its inference settings: what that network's
        weights must match to be loaded, whatever thresholds or mirroring a bundle chose."""
        return {k: v for k, v in asdict(getattr(self, part)).items() if k not in INFERENCE_SETTINGS}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a header dict; unknown keys are refused so a mismatch is never silent."""
        parts = {}
        for f in fields(cls):
            sub_cls = f.default_factory().__class__  # type: ignore[misc]
            raw = dict(data.get(f.name, {}))
            known = {sf.name for sf in fields(sub_cls)}
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"unknown {f.name} settings: {sorted(unknown)}")
            for key, value in raw.items():
                if isinstance(value, list):
                    raw[key] = tuple(value)
            parts[f.name] = sub_cls(**raw)
        return cls(**parts)


def with_settings(config: ModelConfig, items: list[str]) -> ModelConfig:
    """A copy of ``config`` with ``PART.KEY=VALUE`` inference settings applied (``segmenter.
    tumour_threshold=0.4``); ValueError for anything but an inference setting, since the networks'
    shapes must match their weights."""
    data = config.to_dict()
    for item in items:
        key, sep, value = item.partition("=")
        part, _, name = key.partition(".")
        if not sep or part not in data or name not in data[part]:
            raise ValueError(f"{item!r}: expected PART.KEY=VALUE with a setting of the configuration")
        if name not in INFERENCE_SETTINGS:
            raise ValueError(f"{item!r}: {name} shapes the networks; only inference settings can change")
        current = data[part][name]
        if isinstance(current, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{item!r}: {name} is true or false")
            data[part][name] = value.lower() == "true"
        elif isinstance(current, str):
            data[part][name] = value
        else:
            try:
                number = type(current)(value)
            except ValueError:
                raise ValueError(f"{item!r}: {name} takes a number") from None
            if not math.isfinite(number):
                raise ValueError(f"{item!r}: {name} takes a finite number")
            data[part][name] = number
        try:  # a part's own checks (SegmenterConfig.__post_init__) judge the value, named with its item
            type(getattr(config, part))(**data[part])
        except ValueError as err:
            raise ValueError(f"{item!r}: {err}") from None
    return ModelConfig.from_dict(data)
