"""Hounsfield units by tissue and contrast phase, and their domain randomisation.

Each tissue has an unenhanced range and an enhancement range per phase; a phantom draws one value in
each, scales every enhancement by a common "bolus" factor (dose, cardiac output, timing) and widens
the draw around the literature range by ``spread`` (SynthSeg-style randomisation, kept centred on
real values so that context stays plausible).  Texture SDs are drawn too.  See docs/phantoms.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tissues import TISSUE_NAMES

PHASES = ("corticomedullary", "nephrographic", "excretory")

# name: (unenhanced lo, hi), enhancement (lo, hi) per phase (cm, ne, ex), texture SD (lo, hi)
HU_TABLE: dict[str, tuple] = {
    "air": ((-1000, -1000), ((0, 0), (0, 0), (0, 0)), (0, 0)),
    "fat": ((-115, -85), ((0, 5), (0, 8), (0, 8)), (6, 16)),
    "skin": ((20, 50), ((5, 20), (10, 25), (5, 20)), (5, 12)),
    "muscle": ((40, 58), ((5, 18), (10, 25), (5, 18)), (6, 14)),
    "cortical_bone": ((380, 950), ((0, 0), (0, 0), (0, 0)), (40, 120)),
    "cancellous_bone": ((110, 260), ((0, 15), (0, 20), (0, 15)), (20, 45)),
    "disc": ((70, 100), ((0, 10), (0, 15), (0, 15)), (5, 12)),
    "csf": ((0, 15), ((0, 0), (0, 0), (0, 0)), (3, 8)),
    "liver": ((50, 65), ((10, 35), (45, 75), (25, 45)), (4, 10)),
    "hepatic_vessel": ((35, 50), ((40, 130), (110, 170), (50, 90)), (4, 10)),
    "gallbladder": ((0, 25), ((0, 0), (0, 0), (0, 5)), (3, 8)),
    "spleen": ((40, 55), ((50, 120), (60, 95), (40, 65)), (5, 14)),
    "pancreas": ((35, 50), ((60, 110), (45, 80), (25, 45)), (6, 14)),
    "aorta": ((35, 50), ((200, 350), (100, 170), (60, 100)), (5, 12)),
    "vein": ((35, 50), ((30, 140), (100, 170), (60, 100)), (5, 12)),
    "bowel_wall": ((35, 50), ((40, 100), (40, 80), (20, 50)), (6, 14)),
    "bowel_fluid": ((0, 25), ((0, 0), (0, 5), (0, 5)), (4, 12)),
    "bowel_gas": ((-1000, -930), ((0, 0), (0, 0), (0, 0)), (5, 20)),
    "oral_contrast": ((180, 500), ((0, 0), (0, 0), (0, 0)), (15, 50)),
    "feces": ((-160, 10), ((0, 0), (0, 0), (0, 0)), (50, 120)),
    "lung": ((-880, -790), ((0, 0), (0, 10), (0, 10)), (15, 40)),
    "heart_blood": ((35, 50), ((150, 320), (100, 170), (60, 100)), (5, 12)),
    "myocardium": ((40, 55), ((60, 120), (50, 85), (30, 55)), (5, 12)),
    "bladder_urine": ((0, 20), ((0, 0), (0, 20), (40, 500)), (3, 10)),
    "kidney_cortex": ((30, 45), ((120, 210), (110, 160), (80, 135)), (6, 14)),
    "kidney_medulla": ((30, 45), ((25, 75), (110, 160), (85, 140)), (6, 14)),
    "renal_sinus_fat": ((-110, -70), ((0, 5), (0, 8), (0, 8)), (8, 18)),
    "collecting_system": ((0, 20), ((0, 0), (0, 25), (280, 980)), (5, 25)),
    "tumour": ((25, 45), ((60, 190), (45, 110), (30, 75)), (10, 28)),
    "tumour_necrosis": ((5, 30), ((0, 5), (0, 8), (0, 8)), (5, 12)),
    "cartilage": ((80, 140), ((0, 10), (0, 10), (0, 10)), (8, 18)),
    "soft_tissue": ((35, 50), ((20, 60), (30, 70), (20, 50)), (6, 14)),
    "table": ((-500, -300), ((0, 0), (0, 0), (0, 0)), (20, 60)),
    "mesenteric_vessel": ((35, 50), ((60, 250), (90, 160), (50, 90)), (5, 12)),
}

# Tissues whose enhancement rises with the bolus factor.
assert set(HU_TABLE) == set(TISSUE_NAMES), "every tissue needs a HU entry"


@dataclass
class Draw:
    """The intensities one phantom uses: mean and texture SD per tissue id, plus global settings."""

    phase: str
    mean: np.ndarray  # float32 per tissue id
    sd: np.ndarray
    bolus: float
    gain: float
    offset: float
    tumour_type: str

    def hu(self, name: str) -> float:
        return float(self.mean[TISSUE_NAMES.index(name)])


def tissue_range(name: str, phase: str, spread: float) -> tuple[float, float]:
    """The widest interval a tissue mean can be drawn from (before global gain/offset)."""
    (u0, u1), enh, _ = HU_TABLE[name]
    e0, e1 = enh[PHASES.index(phase)]
    lo, hi = u0 + 0.7 * e0, u1 + 1.3 * e1  # bolus factor in [0.7, 1.3]
    half = 0.5 * (hi - lo) * spread + 5.0 * (spread - 1.0) * (name != "air")
    mid = 0.5 * (lo + hi)
    return (mid - half, mid + half) if name != "air" else (-1000.0, -1000.0)


TUMOUR_TYPES = ("hyper", "hypo", "iso", "cystic")


def draw_intensities(rng: np.random.Generator, phase: str | None = None, spread: float = 1.3,
                     gain_jitter: float = 0.06, offset_jitter: float = 12.0) -> Draw:
    """Draw every tissue's mean HU and texture SD for one phantom."""
    if phase is None:
        phase = str(rng.choice(PHASES, p=[0.3, 0.45, 0.25]))
    p = PHASES.index(phase)
    bolus = rng.uniform(0.7, 1.3)
    n = len(TISSUE_NAMES)
    mean = np.zeros(n, np.float32)
    sd = np.zeros(n, np.float32)
    for i, name in enumerate(TISSUE_NAMES):
        (u0, u1), enh, (s0, s1) = HU_TABLE[name]
        base = rng.uniform(u0, u1) + bolus * rng.uniform(*enh[p])
        lo, hi = tissue_range(name, phase, spread)
        mid = 0.5 * (lo + hi)
        # widen: push the draw away from the middle by the spread factor, never outside the range
        mean[i] = np.clip(mid + (base - mid) * spread * rng.uniform(0.6, 1.0), lo, hi)
        sd[i] = rng.uniform(s0, s1)
    t = TISSUE_NAMES.index
    # physiological couplings that make the phases recognisable
    if phase == "nephrographic":
        mean[t("kidney_medulla")] = mean[t("kidney_cortex")] + rng.uniform(-18, 6)
    if phase != "excretory":
        mean[t("collecting_system")] = min(mean[t("collecting_system")], 35.0)
    mean[t("mesenteric_vessel")] = 0.5 * (mean[t("mesenteric_vessel")] + mean[t("vein")])
    tumour_type = str(rng.choice(TUMOUR_TYPES, p=[0.5, 0.2, 0.2, 0.1]))
    parenchyma = mean[t("kidney_cortex")]
    if tumour_type == "hypo":
        mean[t("tumour")] = rng.uniform(35, 85)
    elif tumour_type == "iso":
        mean[t("tumour")] = parenchyma + rng.uniform(-25, 15)
    elif tumour_type == "cystic":
        mean[t("tumour")] = rng.uniform(60, 140)
    gain = 1.0 + rng.uniform(-gain_jitter, gain_jitter)
    offset = rng.uniform(-offset_jitter, offset_jitter)
    return Draw(phase, mean, sd, float(bolus), float(gain), float(offset), tumour_type)


def apply_global(draw: Draw) -> np.ndarray:
    """Tissue means after the global contrast/brightness jitter (air stays at -1000)."""
    m = draw.mean * draw.gain + draw.offset
    m[0] = -1000.0
    return m.astype(np.float32)
