"""KidneyTumorSegLib: kidney and kidney-tumour segmentation in contrast-enhanced abdominal CT.

Everything that is not GUI lives here, one job per module. In the order a scan meets them:

- ``volume``: the one geometry type (array, spacing, origin, direction) and its grid arithmetic;
- ``headers``: NIfTI and MetaImage headers checked before ITK's readers see a file;
- ``dicom``: the image series a DICOM folder holds, and the one to segment;
- ``io``: reading volumes and writing them, each output staged so it appears whole or not at all;
- ``memory``: the memory budget of a run, from the image's header, before any voxel is read;
- ``checks``: is this a CT in Hounsfield units, before any network sees it;
- ``resampling``: every move of an image or label map between grids, whole or slab by slab;
- ``preprocess``: the HU window the networks see;
- ``config``: the networks' shapes, working grids and inference settings;
- ``weights``: weights bundles (safetensors plus a JSON header), never a pickle;
- ``networks/``: the z-localiser, the xy-localiser and the MRB segmenter;
- ``device``: CPU or CUDA, mixed precision, out-of-memory detection;
- ``localisation``: from the localisers' outputs to one box per kidney;
- ``patches``: the segmenter's windows and their Gaussian-weighted stitching;
- ``postprocess``: from probabilities to clean kidney and tumour labels, and their sides;
- ``plausibility``: what must surround a segmented kidney;
- ``run_context``: what one run owns (device, progress, cancel, warnings, clock);
- ``pipeline``: the engine, composing the stages above;
- ``measure``: volumes per side and the tumour's largest diameter;
- ``contrast``: the contrast phase, judged by the kidneys;
- ``report``: the run's report, as JSON and as a short summary;
- ``terminology``: segment names, colours, standard codes, sides and label values;
- ``segfile``: Slicer ``.seg.nrrd`` files, written and read back;
- ``snapshot``: a picture of axial and coronal slices for a quick look;
- ``export``: corrected segmentations as KiTS training cases;
- ``batch``: many scans in one run, with a summary table;
- ``cli``, ``__main__``: the command line (``kidney-tumor-seg``, ``python -m KidneyTumorSegLib``);
- ``mrml/``: the bridge to Slicer's MRML scene (no GUI), and the CLI run in the background;
- ``kits``: the KiTS19/21/23 layout, read and written;
- ``labelled_scans``: real scans with label maps in any labelling scheme;
- ``phantoms/``: synthetic contrast CTs painted around label maps;
- ``sample``: a synthetic sample CT to try the module on;
- ``training/``: training and evaluating the three networks;
- ``errors``: the errors a user can cause, each one sentence with its exit code.

Importing the package is cheap; heavy modules (torch) load on first use.
"""

__version__ = "0.1.0"
