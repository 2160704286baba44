"""Kidney Tumor Seg: kidneys and kidney tumours in contrast-enhanced abdominal CT, in one click.

The GUI only. Everything else (engine, files, the MRML bridge, the background run) lives in the
``KidneyTumorSegLib`` package, which this file finds both in an installed extension (beside this
script) and in a source checkout added under "Additional module paths" (one folder up).
"""

import importlib.util
import os
import sys
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4

    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def _ensureLibraryImportable():
    """Make ``KidneyTumorSegLib`` importable: beside this file (installed) or one folder up (checkout)."""
    if importlib.util.find_spec("KidneyTumorSegLib") is not None:
        return
    for base in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isdir(os.path.join(base, "KidneyTumorSegLib")):
            sys.path.insert(0, base)
            return


_ensureLibraryImportable()


def resourcePath(relativePath):
    """A file under ``Resources/``: beside this file (installed) or one folder up (source checkout)."""
    for base in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(MODULE_DIR, "Resources", relativePath)


DEVICES = {"Auto": "auto", "CUDA": "cuda", "CPU": "cpu"}
# Python packages the engine needs beyond what Slicer ships (import names).
ENGINE_PACKAGES = ("torch", "scipy", "safetensors")
NOT_CT_EXIT_CODE = 5  # the command line's "not a CT in Hounsfield units" (README exit-code table)


def registerSampleData():
    """Offer the synthetic CT in the Sample Data module; it is made here on first use, not downloaded."""
    import SampleData

    from KidneyTumorSegLib.mrml.sample import sample_path
    from KidneyTumorSegLib.sample import SAMPLE_FILE, SAMPLE_NAME, SAMPLE_NODE_NAME

    def makeAndLoad(source):
        slicer.util.selectModule("KidneyTumorSeg")
        slicer.modules.kidneytumorseg.widgetRepresentation().self().onLoadSample()

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Kidney Tumor Seg", sampleName=SAMPLE_NAME, uris=sample_path().as_uri(),
        fileNames=SAMPLE_FILE, nodeNames=SAMPLE_NODE_NAME, loadFileType="VolumeFile",
        thumbnailFileName=resourcePath("Icons/KidneyTumorSegPhantom.png"), customDownloader=makeAndLoad,
    )


#
# KidneyTumorSeg
#
class KidneyTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Kidney Tumor Seg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["KidneyTumorSeg contributors"]
        self.parent.helpText = _(
            "Segments the kidneys and kidney tumors in a contrast-enhanced abdominal CT and reports, per side, "
            "kidney and tumor volume and the tumor's largest diameter. Select the CT, press Apply, then check "
            "and correct the result in the Segment Editor.<br><br>"
            "Method: Qiao, Zhao &amp; Liu, <i>Kidney and kidney tumour segmentation</i> (KiTS19 challenge "
            "submission): a ResNet34 slice classifier finds the kidneys' z-range, a 2D U-Net finds them in "
            "each slice, and a 3D network of multiple-scale residual blocks segments kidney and tumor in "
            "patches around them.<br>"
            "Data: Heller et al., <i>The KiTS19 Challenge Data</i>, "
            "<a href='https://arxiv.org/abs/1904.00445'>arXiv:1904.00445</a>.<br><br>"
            "For research use only; not for clinical decisions. "
            "See the <a href='https://github.com/KidneyTumorSeg/SlicerKidneyTumorSeg'>project page</a>."
        )
        self.parent.acknowledgementText = _(
            "Built on the method of Qiao, Zhao and Liu (Nankai University) for the 2019 Kidney Tumor "
            "Segmentation Challenge (KiTS19), and on the KiTS19 data of Heller et al. Uses 3D Slicer, "
            "PyTorch and SimpleITK."
        )
        iconPath = resourcePath("Icons/KidneyTumorSeg.png")
        if os.path.exists(iconPath):
            self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# KidneyTumorSegParameterNode
#
@parameterNodeWrapper
class KidneyTumorSegParameterNode:
    """Inputs and outputs of the module, saved with the scene.

    inputVolume - the CT to segment (only read).
    outputSegmentation - where the segments go (None: a new segmentation is created).
    device - Auto, CUDA or CPU.
    weightsPath - a weights file; empty for the bundled weights.
    allowNonCT - segment a scan that fails the Hounsfield-unit check (the result carries a warning).
    fastMode - no test-time mirroring (about half the segmenter's time).
    threads - CPU threads for the networks (0: PyTorch decides).
    exportFolder - the folder of training cases "Export for training" writes into.
    resultsTable - the table of volumes and diameters of the last run.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(DEVICES))] = "Auto"
    weightsPath: str = ""
    allowNonCT: bool = False
    fastMode: bool = False
    threads: Annotated[int, WithinRange(0, 256)] = 0
    exportFolder: str = ""
    resultsTable: vtkMRMLTableNode


#
# KidneyTumorSegWidget
#
class KidneyTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the background segmentation, or the background install, while one runs
        self._afterInstall = None
        self._shownLog = None
        self._cudaStatus = None
        self._cudaProbe = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/KidneyTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KidneyTumorSegLogic()

        self.ui.weightsPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.weightsPathLineEdit.nameFilters = [_("KidneyTumorSeg weights (*.safetensors)")]
        self.ui.exportFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.timeout.connect(self.onPollTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3D)
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.exportForTrainingButton.connect("clicked(bool)", self.onExportForTraining)
        self.ui.copyLogButton.connect("clicked(bool)", self.onCopyLog)
        self.ui.weightsPathLineEdit.connect("currentPathChanged(QString)", self.onWeightsPathChanged)
        self.ui.exportFolderPathLineEdit.connect("currentPathChanged(QString)", self.onExportFolderChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:  # Slicer is closing: stop the child, waiting for it at most briefly
            self._job.cancel(grace_s=2.0)
            self._job.wait()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateDeviceChoices()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectGui refills the device combo box, so its CUDA entry is set up again afterwards
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.ui.weightsPathLineEdit.currentPath = self._parameterNode.weightsPath
            self.ui.exportFolderPathLineEdit.currentPath = self._parameterNode.exportFolder
            self.updateDeviceChoices(refresh=False)
            self.updateGUI()

    # --- GUI state ------------------------------------------------------------------------------
    def updateDeviceChoices(self, refresh=True) -> None:
        """Disable CUDA, with a tooltip saying why, when PyTorch cannot use a GPU.

        Asked of Slicer's Python in a child process (torch is never imported into the GUI process).
        """
        if self._cudaStatus is None and refresh and self._cudaProbe is None:
            self._cudaProbe = self.logic.startCudaProbe()
            qt.QTimer.singleShot(250, self._onCudaProbeTimer)
        available, reason = self._cudaStatus or (True, _("Checking whether PyTorch can use a GPU..."))
        combo = self.ui.deviceComboBox
        index = combo.findText("CUDA")
        if index < 0:
            return
        model = combo.model()
        if hasattr(model, "item"):
            model.item(index).setEnabled(bool(available))
        else:  # the item-flags role of QComboBox's standard model
            combo.setItemData(index, 33 if available else 0, qt.Qt.UserRole - 1)
        combo.setItemData(index, reason, qt.Qt.ToolTipRole)
        if not available and self._parameterNode and self._parameterNode.device == "CUDA":
            self._parameterNode.device = "Auto"

    def _onCudaProbeTimer(self) -> None:
        if self._cudaProbe is None:
            return
        result = self._cudaProbe.poll()
        if result is None:
            qt.QTimer.singleShot(250, self._onCudaProbeTimer)
            return
        self._cudaProbe = None
        self._cudaStatus = result
        self.updateDeviceChoices(refresh=False)

    def updateGUI(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        if running:
            cancelling = self._job.state == "cancelling"
            self.ui.applyButton.text = _("Cancelling...") if cancelling else _("Cancel")
            self.ui.applyButton.toolTip = _("Stop; nothing is changed.")
            self.ui.applyButton.enabled = not cancelling
        else:
            self.ui.applyButton.text = _("Apply")
            canApply = bool(p and p.inputVolume)
            self.ui.applyButton.enabled = canApply
            self.ui.applyButton.toolTip = (
                _("Segment kidneys and kidney tumors in the input CT.") if canApply else _("Select an input CT volume.")
            )
        for widget in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        segmentation = p.outputSegmentation if p else None
        hasResult = bool(segmentation) and self.logic.hasResult(segmentation)
        self.ui.show3DButton.enabled = hasResult and not running
        self.ui.editInSegmentEditorButton.enabled = hasResult and not running
        hasSegments = bool(segmentation) and segmentation.GetSegmentation().GetNumberOfSegments() > 0
        self.ui.exportForTrainingButton.enabled = hasSegments and bool(p.inputVolume) and not running
        table = self.logic.resultsTable(segmentation) if segmentation else None
        if p and table is not p.resultsTable:
            p.resultsTable = table
        self.ui.resultsTableView.setMRMLTableNode(table)

    def onWeightsPathChanged(self, path) -> None:
        if self._parameterNode and self._parameterNode.weightsPath != path:
            self._parameterNode.weightsPath = path

    def onExportFolderChanged(self, path) -> None:
        if self._parameterNode and self._parameterNode.exportFolder != path:
            self._parameterNode.exportFolder = path

    def _showLog(self, job) -> None:
        lines = list(job.log)
        if lines != self._shownLog:
            self._shownLog = lines
            self.ui.logTextEdit.setPlainText("\n".join(lines))
            self.ui.logTextEdit.moveCursor(qt.QTextCursor.End)

    def onCopyLog(self) -> None:
        qt.QApplication.clipboard().setText(self.ui.logTextEdit.plainText)

    # --- actions --------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()  # returns at once; the poll timer ends the job when the child is gone
            self.ui.statusLabel.text = _("Cancelling...")
            self.updateGUI()
            return
        p = self._parameterNode
        missing = self.logic.missingEngineDependencies()
        if missing:
            self.startInstall(missing, then=self.onApplyButton)
            return
        with slicer.util.tryWithErrorDisplay(_("The segmentation could not be started."), waitCursor=True):
            self._cudaStatus = None
            self.updateDeviceChoices()
            edited = self.logic.editedSegments(p.outputSegmentation)
            if edited and not slicer.util.confirmYesNoDisplay(
                _("These segments were edited since they were computed: {names}.\n\nReplace them with a new "
                  "result? (Other segments are kept.)").format(names=", ".join(edited)),
                windowTitle=_("Replace edited segments?"),
            ):
                return
            self._job = self.logic.startBackground(
                p.inputVolume, p.outputSegmentation, DEVICES[p.device], p.weightsPath or None,
                allowNonCT=p.allowNonCT, noMirror=p.fastMode, threads=p.threads or None,
            )
            self._startPolling(_("Starting..."))
        self.updateGUI()

    def startInstall(self, missing, then=None) -> None:
        """Ask, then install ``missing`` packages in the background; ``then()`` runs once they are there."""
        # torch through the PyTorch extension's light-the-torch when it is installed, in child processes
        from KidneyTumorSegLib.mrml import BackgroundInstall, describe_plan, install_plan_here

        steps = install_plan_here(missing)
        if not slicer.util.confirmOkCancelDisplay(
            _("Kidney Tumor Seg needs these Python packages, which are not installed yet:\n\n{what}\n\n"
              "They are downloaded and installed in the background: Slicer stays usable, the panel shows the "
              "progress and you can cancel. Install now?").format(what=describe_plan(steps)),
            windowTitle=_("Install PyTorch?"),
        ):
            self.ui.statusLabel.text = _("PyTorch is needed to segment; it was not installed.")
            return
        self._job = BackgroundInstall(steps).start()
        self._afterInstall = then
        self._startPolling(_("Installing {what}...").format(what=steps[0].what))
        self.updateGUI()

    def _startPolling(self, message) -> None:
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.statusLabel.text = message
        self._shownLog = None
        self._pollTimer.start()

    def cancelRun(self) -> None:
        """Stop the running job without waiting: it is polled until its child is gone."""
        if self._job is not None:
            self._job.cancel()
            self.updateGUI()

    def onPollTimer(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        state = job.poll()
        self.ui.progressBar.value = int(round(100 * job.fraction))
        self.ui.statusLabel.text = job.message
        self._showLog(job)
        if state in ("running", "cancelling"):
            return
        self._pollTimer.stop()
        self._job = None
        self.ui.progressBar.hide()
        if hasattr(job, "segmentation_node"):
            self._segmentationEnded(job, state)
        else:
            self._installEnded(job, state)
        self.updateGUI()

    def _segmentationEnded(self, job, state) -> None:
        p = self._parameterNode
        if state == "done" and p is not None:
            p.outputSegmentation = job.segmentation_node
            self.logic.show3D(job.segmentation_node)
            self.ui.statusLabel.text = self.logic.summary(job.report)
            self._resetThreeDView()
        elif state == "error":
            self.ui.statusLabel.text = job.error
            if job.returncode == NOT_CT_EXIT_CODE and p is not None and not p.allowNonCT:
                if slicer.util.confirmYesNoDisplay(
                    job.error + "\n\n" + _("Segment it anyway? Only do so if you are sure the scan is a CT; the "
                                           "result will carry a warning."), windowTitle=_("Not a CT?")):
                    p.allowNonCT = True
                    qt.QTimer.singleShot(0, self.onApplyButton)
                return
            slicer.util.errorDisplay(job.error, windowTitle=_("Kidney Tumor Seg"))
        elif state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; nothing was changed.")

    def _installEnded(self, job, state) -> None:
        then, self._afterInstall = self._afterInstall, None
        if state == "done":
            importlib.invalidate_caches()
            if self.logic.missingEngineDependencies():
                self.ui.statusLabel.text = _("The packages were installed but cannot be loaded yet; restart Slicer.")
            elif then is not None:
                then()
        elif state == "error":
            self.ui.statusLabel.text = job.error
            slicer.util.errorDisplay(job.error, windowTitle=_("Kidney Tumor Seg"))
        else:
            self.ui.statusLabel.text = _("Installation cancelled; nothing more was installed.")

    def onLoadSample(self) -> None:
        """Load the synthetic sample CT (made here on first use) as the input."""
        if self._job is not None:
            return
        if self.logic.missingEngineDependencies(("scipy",)):
            self.startInstall(self.logic.missingEngineDependencies(), then=self.onLoadSample)
            return
        with slicer.util.tryWithErrorDisplay(_("The sample CT could not be made."), waitCursor=True):
            self._parameterNode.inputVolume = self.logic.loadSample()
            self.ui.statusLabel.text = _("Sample CT loaded: a synthetic phantom, not a patient. Press Apply.")

    def onShow3D(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        if segmentation:
            self.logic.show3D(segmentation)
            self._resetThreeDView()

    def _resetThreeDView(self) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def onEditInSegmentEditor(self) -> None:
        p = self._parameterNode
        if not p.outputSegmentation:
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.outputSegmentation)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        setSource(p.inputVolume)

    def onExportForTraining(self) -> None:
        """Write the input CT and the segmentation, as corrected, as a new case of the training folder."""
        p = self._parameterNode
        folder = p.exportFolder or qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder of training cases (KiTS layout)"))
        if not folder:
            return
        self.ui.exportFolderPathLineEdit.currentPath = folder
        try:
            with slicer.util.WaitCursor():
                case = self.logic.exportForTraining(p.outputSegmentation, p.inputVolume, folder)
        except Exception as err:  # the library's errors are one sentence the user can act on
            self.ui.statusLabel.text = str(err)
            slicer.util.errorDisplay(str(err), windowTitle=_("Export for training"))
            return
        self.ui.statusLabel.text = _("Exported {case} (CT, labels 0/1/2 and provenance).").format(case=case)


#
# KidneyTumorSegLogic
#
class KidneyTumorSegLogic(ScriptedLoadableModuleLogic):
    """Thin: everything is delegated to ``KidneyTumorSegLib`` (engine and MRML bridge)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return KidneyTumorSegParameterNode(super().getParameterNode())

    # --- dependencies ---------------------------------------------------------------------------
    @staticmethod
    def missingEngineDependencies(names=None):
        return [name for name in (names or ENGINE_PACKAGES) if importlib.util.find_spec(name) is None]

    @staticmethod
    def startCudaProbe():
        """Start asking (in a child process) whether PyTorch can use CUDA; poll() gives (available, reason)."""
        from KidneyTumorSegLib.mrml import CudaProbe

        return CudaProbe()

    # --- running --------------------------------------------------------------------------------
    def process(self, inputVolume, outputSegmentation=None, device="auto", weights=None, progress=None):
        """Segment in this process (scripts, self-test); returns the segmentation node."""
        from KidneyTumorSegLib.mrml import segment_volume_node

        if not inputVolume:
            raise ValueError("Input volume is invalid")
        return segment_volume_node(inputVolume, outputSegmentation, device=device, weights=weights,
                                   progress=progress)

    def startBackground(self, inputVolume, outputSegmentation=None, device="auto", weights=None, onProgress=None,
                        allowNonCT=False, noMirror=False, threads=None):
        """Start a background run (the GUI polls it); returns the job."""
        from KidneyTumorSegLib.mrml import BackgroundSegmentation

        if not inputVolume:
            raise ValueError("Input volume is invalid")
        return BackgroundSegmentation(inputVolume, outputSegmentation, device=device, weights=weights,
                                      on_progress=onProgress, allow_non_ct=allowNonCT, no_mirror=noMirror,
                                      threads=threads).start()

    # --- results --------------------------------------------------------------------------------
    @staticmethod
    def editedSegments(segmentationNode):
        from KidneyTumorSegLib.mrml import user_edited_segments

        return user_edited_segments(segmentationNode) if segmentationNode else []

    @staticmethod
    def hasResult(segmentationNode):
        from KidneyTumorSegLib.mrml import our_segment_ids

        return bool(our_segment_ids(segmentationNode))

    @staticmethod
    def resultsTable(segmentationNode):
        from KidneyTumorSegLib.mrml import results_table_of

        return results_table_of(segmentationNode)

    @staticmethod
    def show3D(segmentationNode):
        segmentationNode.CreateClosedSurfaceRepresentation()
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is None:
            segmentationNode.CreateDefaultDisplayNodes()
            displayNode = segmentationNode.GetDisplayNode()
        displayNode.SetVisibility(True)
        displayNode.SetVisibility3D(True)

    @staticmethod
    def summary(report):
        from KidneyTumorSegLib.report import summary_text

        return summary_text(report or {})

    @staticmethod
    def exportForTraining(segmentationNode, volumeNode, folder, caseId=None):
        """Write one KiTS case (CT, labels on its grid, provenance) into ``folder``; returns its name."""
        from KidneyTumorSegLib.mrml import export_training_case

        return export_training_case(segmentationNode, volumeNode, folder, caseId).name

    @staticmethod
    def loadSample():
        """The synthetic sample CT as a volume node, made into Slicer's cache folder on first use."""
        from KidneyTumorSegLib.mrml.sample import load_sample

        return load_sample()


#
# KidneyTumorSegTest
#
class KidneyTumorSegTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic (phantom) CT with known kidneys and tumor, segmented on the CPU."""

    KIDNEY_DICE_MIN = 0.92  # bundled weights on the phantom, whole kidney (kidney + tumour)
    TUMOUR_DICE_MIN = 0.8

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_KidneyTumorSeg_phantom()
        self.setUp()
        self.test_KidneyTumorSeg_background()

    def _phantomVolumeNode(self, seed=3):
        from KidneyTumorSegLib.mrml import volume_to_node
        from KidneyTumorSegLib.sample import make_sample_ct

        ct, truth = make_sample_ct(seed)  # seed 3 is the Sample Data CT
        return volume_to_node(ct, name="Phantom CT"), truth

    @staticmethod
    def _dice(a, b):
        denominator = int(a.sum()) + int(b.sum())
        return 1.0 if denominator == 0 else 2.0 * int((a & b).sum()) / denominator

    def test_KidneyTumorSeg_phantom(self):
        import tempfile

        import numpy as np

        from KidneyTumorSegLib.io import read_volume
        from KidneyTumorSegLib.mrml import export_structures, our_segment_ids, read_results_table
        from KidneyTumorSegLib.terminology import STRUCTURES

        self.delayDisplay("Making a phantom CT")
        volumeNode, truth = self._phantomVolumeNode()
        before = slicer.util.arrayFromVolume(volumeNode).copy()
        self.assertFalse(KidneyTumorSegLogic.missingEngineDependencies(), "PyTorch and friends must be installed")

        self.delayDisplay("Segmenting on the CPU")
        logic = KidneyTumorSegLogic()
        segmentationNode = logic.process(volumeNode, device="cpu")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(volumeNode), before))

        ours = our_segment_ids(segmentationNode)
        self.assertIn("kidney_right", ours)
        self.assertIn("kidney_left", ours)
        segmentation = segmentationNode.GetSegmentation()
        for key, segmentId in ours.items():
            segment = segmentation.GetSegment(segmentId)
            self.assertEqual(segment.GetName(), STRUCTURES[key].name)
            terminology = vtk.reference("")
            self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), terminology))
            self.assertEqual(str(terminology), STRUCTURES[key].terminology)
            self.assertGreater(segmentationNode.GetClosedSurfaceInternalRepresentation(segmentId).GetNumberOfPoints(), 0)

        masks = export_structures(segmentationNode, volumeNode, keys_only_ours=True)
        kidney = np.zeros(truth.array.shape, bool)
        tumour = np.zeros(truth.array.shape, bool)
        for key, mask in masks.items():
            if key.startswith("tumour"):
                tumour |= mask
            else:
                kidney |= mask
        voxelMl = truth.voxel_volume_ml
        wholeKidneyMl = (kidney | tumour).sum() * voxelMl
        self.assertTrue(80 < wholeKidneyMl < 800, f"implausible kidney volume {wholeKidneyMl:.0f} mL")
        self.assertGreaterEqual(self._dice(kidney | tumour, truth.array > 0), self.KIDNEY_DICE_MIN)
        if (truth.array == 2).sum() * voxelMl >= 1.0:
            self.assertGreaterEqual(self._dice(tumour, truth.array == 2), self.TUMOUR_DICE_MIN)

        self.delayDisplay("Exporting for training")
        with tempfile.TemporaryDirectory() as folder:
            case = logic.exportForTraining(segmentationNode, volumeNode, folder)
            labels = read_volume(os.path.join(folder, case, "segmentation.nii.gz")).array
            self.assertTrue(np.array_equal(labels == 2, tumour) and np.array_equal(labels == 1, kidney & ~tumour))

        rows = read_results_table(logic.resultsTable(segmentationNode))
        self.assertEqual({r["Side"] for r in rows}, {"Right", "Left"})
        for row in rows:
            side = row["Side"].lower()
            kidneyMl = masks.get(f"kidney_{side}", np.zeros(1, bool)).sum() * voxelMl
            self.assertAlmostEqual(row["Kidney (without tumor) volume (mL)"], kidneyMl, delta=0.01)
        self.delayDisplay("Phantom test passed")

    def test_KidneyTumorSeg_background(self):
        """The GUI's path: Slicer's Python in a child process, polled, loaded into the scene."""
        import time

        import numpy as np

        from KidneyTumorSegLib.mrml import export_structures

        volumeNode, truth = self._phantomVolumeNode(seed=5)
        logic = KidneyTumorSegLogic()
        progress = []
        job = logic.startBackground(volumeNode, device="cpu", onProgress=lambda f, m: progress.append(f))
        start = time.time()
        while job.poll() == "running":
            slicer.app.processEvents()
            time.sleep(0.1)
            self.assertLess(time.time() - start, 1200, "the background run took too long")
        self.assertEqual(job.state, "done", job.error)
        self.assertTrue(progress and progress[-1] == 1.0)
        masks = export_structures(job.segmentation_node, volumeNode, keys_only_ours=True)
        whole = np.zeros(truth.array.shape, bool)
        for mask in masks.values():
            whole |= mask
        self.assertGreaterEqual(self._dice(whole, truth.array > 0), self.KIDNEY_DICE_MIN)
        self.delayDisplay("Background test passed")
