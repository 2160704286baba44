"""Tissue ids of the phantom's tissue map (uint8).  Names are what ``info["tissues"]`` reports."""

from __future__ import annotations

TISSUE_NAMES = (
    "air",  # 0: outside the body
    "fat",  # subcutaneous, visceral, perirenal
    "skin",
    "muscle",
    "cortical_bone",
    "cancellous_bone",
    "disc",
    "csf",
    "liver",
    "hepatic_vessel",
    "gallbladder",
    "spleen",
    "pancreas",
    "aorta",  # and the other arteries
    "vein",  # IVC, renal and iliac veins
    "bowel_wall",
    "bowel_fluid",
    "bowel_gas",
    "oral_contrast",
    "feces",
    "lung",
    "heart_blood",
    "myocardium",
    "bladder_urine",
    "kidney_cortex",
    "kidney_medulla",
    "renal_sinus_fat",
    "collecting_system",  # urine in calyces, pelvis and ureter
    "tumour",
    "tumour_necrosis",
    "cartilage",
    "soft_tissue",  # adrenals, pelvic organs, lymph nodes, diaphragm crura
    "table",  # the scanner table below the patient
    "mesenteric_vessel",
)

T = {name: i for i, name in enumerate(TISSUE_NAMES)}
AIR, FAT, SKIN, MUSCLE, CORTICAL, CANCELLOUS, DISC, CSF = (T[n] for n in TISSUE_NAMES[:8])
LIVER, HEPATIC_VESSEL, GALLBLADDER, SPLEEN, PANCREAS, AORTA, VEIN = (T[n] for n in TISSUE_NAMES[8:15])
BOWEL_WALL, BOWEL_FLUID, BOWEL_GAS, ORAL_CONTRAST, FECES = (T[n] for n in TISSUE_NAMES[15:20])
LUNG, HEART_BLOOD, MYOCARDIUM, BLADDER = (T[n] for n in TISSUE_NAMES[20:24])
CORTEX, MEDULLA, SINUS_FAT, COLLECTING, TUMOUR, NECROSIS = (T[n] for n in TISSUE_NAMES[24:30])
CARTILAGE, SOFT_TISSUE, TABLE, MESENTERIC_VESSEL = (T[n] for n in TISSUE_NAMES[30:34])

KIDNEY_TISSUES = (CORTEX, MEDULLA, SINUS_FAT, COLLECTING)
TUMOUR_TISSUES = (TUMOUR, NECROSIS)
