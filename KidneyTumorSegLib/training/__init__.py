"""Training the three networks of Qiao, Zhao & Liu (z-localiser, xy-localiser, MRB segmenter).

Small modules, one job each, in the spirit of TorchIO's split between data, transforms and sampling:

- ``working_grids``: a case resampled once onto the canonical localiser and segmenter grids;
- ``sources``: where cases come from (a KiTS-layout folder, or phantoms built around label maps);
  ``real_sources``: CTs painted in real bodies and real labelled scans; ``label_pack``: label maps
  resampled beforehand, so phantoms need neither SimpleITK nor the masks;
- ``case_cache``: built cases on disk, and building every case of a source (``load_cases``);
- ``split``: case ids, phantom variants and the case-level train/validation split; ``seeds``:
  seeds that are the same on every machine; ``parallel``: job lists in worker processes;
- ``transforms``: random in-plane rotation, flips, scaling and intensity jitter, applied on the fly
  and identically to image and labels;
- ``sampling``: 2D slices for the localisers and 3D patches for the segmenter, drawn with the
  class balance the paper relies on;
- ``losses``, ``schedule``, ``checkpoint``, ``metrics``, ``distributed``: the training machinery;
- ``loop``: the trainer, one network after the other, each epoch as named steps; ``validation``:
  a network's validation sums and scores as named fields;
- ``evaluate``: the full pipeline on held-out phantoms (``evaluate_real``: on real labelled scans);
  ``cli``: the ``train`` and ``evaluate`` sub-commands.

Importing this package is cheap; torch loads when a module that needs it is imported.
"""

NETWORKS = ("z_localiser", "xy_localiser", "segmenter")
SHORT_NAMES = {"z": "z_localiser", "xy": "xy_localiser", "seg": "segmenter"}
