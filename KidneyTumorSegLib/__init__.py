"""KidneyTumorSegLib: kidney and kidney-tumour segmentation in contrast-enhanced abdominal CT.

Everything that is not GUI lives here: volumes and files, preprocessing, networks, localisation,
the pipeline, post-processing, weights, phantoms, KiTS data, training, reports, the MRML bridge and
the command line. Importing the package is cheap; heavy modules (torch) load on first use.
"""

__version__ = "0.1.0"
