"""Static checks of the Slicer module (no Slicer application here): code, .ui, bindings, CMake lists.

Also a helper to keep the CMake file lists complete::

    python Testing/test_module_static.py --update-cmake
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_NAME = "KidneyTumorSeg"
MODULE_FILE = REPO / MODULE_NAME / f"{MODULE_NAME}.py"
MODULE_CMAKE = REPO / MODULE_NAME / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
UI_FILE = REPO / "Resources" / "UI" / f"{MODULE_NAME}.ui"
ICON_FILE = REPO / "Resources" / "Icons" / f"{MODULE_NAME}.png"
LIB = "KidneyTumorSegLib"

# Qt/CTK/MRML widget classes -> the base classes whose members they have.
CLASS_BASES = {
    "QWidget": (),
    "QLabel": ("QWidget",),
    "QAbstractButton": ("QWidget",),
    "QPushButton": ("QAbstractButton",),
    "QCheckBox": ("QAbstractButton",),
    "QComboBox": ("QWidget",),
    "QProgressBar": ("QWidget",),
    "QLineEdit": ("QWidget",),
    "QSpinBox": ("QWidget",),
    "QDoubleSpinBox": ("QWidget",),
    "QTableView": ("QWidget",),
    "QPlainTextEdit": ("QWidget",),
    "ctkCollapsibleButton": ("QAbstractButton",),
    "ctkPathLineEdit": ("QWidget",),
    "ctkSliderWidget": ("QWidget",),
    "qMRMLWidget": ("QWidget",),
    "qMRMLNodeComboBox": ("QWidget",),
    "qMRMLTableView": ("QTableView",),
}
# Members the module may use on self.ui.X -> the classes that have them.
MEMBERS = {
    "QWidget": {"enabled", "toolTip", "show", "hide", "visible", "setVisible", "setEnabled", "connect"},
    "QLabel": {"text", "setText"},
    "QAbstractButton": {"text", "setText", "checked", "clicked"},
    "QComboBox": {"findText", "model", "setItemData", "currentText", "currentIndex", "addItem", "clear"},
    "QProgressBar": {"value", "setValue", "setRange", "minimum", "maximum"},
    "QLineEdit": {"text", "setText"},
    "QSpinBox": {"value", "setValue", "minimum", "maximum", "specialValueText"},
    "QPlainTextEdit": {"plainText", "setPlainText", "appendPlainText", "clear", "moveCursor", "readOnly"},
    "ctkCollapsibleButton": {"collapsed"},
    "ctkPathLineEdit": {"currentPath", "setCurrentPath", "filters", "nameFilters"},
    "qMRMLNodeComboBox": {"currentNode", "setCurrentNode", "nodeTypes", "setMRMLScene"},
    "QTableView": {"setModel"},
    "qMRMLTableView": {"setMRMLTableNode", "mrmlTableNode", "setMRMLScene"},
}
# Signals connected with widget.connect("signal(args)", slot) -> the classes that emit them.
SIGNALS = {
    "clicked(bool)": "QAbstractButton",
    "clicked()": "QAbstractButton",
    "toggled(bool)": "QAbstractButton",
    "currentPathChanged(QString)": "ctkPathLineEdit",
    "currentNodeChanged(vtkMRMLNode*)": "qMRMLNodeComboBox",
    "currentIndexChanged(int)": "QComboBox",
}
# parameterNodeWrapper connectors: widget class -> what it can represent.
NODE_COMBO, CHOICE, PATH = "node", "choice", "path"
CONNECTORS = {
    "qMRMLNodeComboBox": NODE_COMBO,
    "QComboBox": CHOICE,
    "ctkPathLineEdit": PATH,
    "QCheckBox": "bool",
    "QLineEdit": "str",
    "QSpinBox": "int",
    "QDoubleSpinBox": "float",
    "ctkSliderWidget": "float",
}


def ancestors(cls: str) -> list[str]:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c in out:
            continue
        out.append(c)
        todo.extend(CLASS_BASES.get(c, ()))
    return out


def has_member(cls: str, member: str) -> bool:
    return any(member in MEMBERS.get(a, set()) for a in ancestors(cls))


# --- parsing helpers --------------------------------------------------------------------------------
def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def widget_property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = list(prop)[0]
            if child.tag == "stringlist":
                return [s.text for s in child.findall("string")]
            return child.text
    return None


def ui_uses(tree: ast.Module) -> dict[str, set[str]]:
    """``self.ui.X.member`` (and ``self.ui.X`` alone) found in the module: X -> members used."""
    uses: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner = node.value
            if inner.attr and isinstance(inner.value, ast.Attribute) and inner.value.attr == "ui":
                if isinstance(inner.value.value, ast.Name) and inner.value.value.id == "self":
                    uses.setdefault(inner.attr, set()).add(node.attr)
    return uses


def ui_connections(tree: ast.Module) -> list[tuple[str, str]]:
    """``self.ui.X.connect("signal(args)", ...)`` calls: (X, signal)."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect"
                and isinstance(node.func.value, ast.Attribute)
                and isinstance(node.func.value.value, ast.Attribute) and node.func.value.value.attr == "ui"
                and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((node.func.value.attr, node.args[0].value))
    return out


def parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    """Fields of the class decorated with ``@parameterNodeWrapper``: name -> annotation."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            return {
                s.target.id: s.annotation
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in the module")


def annotation_kind(annotation: ast.expr) -> tuple[str, object]:
    """What a field annotation is, in the terms of CONNECTORS (plus the node class or the choices)."""
    if isinstance(annotation, ast.Name):
        if annotation.id.startswith("vtkMRML"):
            return NODE_COMBO, annotation.id
        if annotation.id in ("bool", "str", "int", "float"):
            return annotation.id, None
    if isinstance(annotation, ast.Attribute) and annotation.attr in ("Path", "PurePath"):
        return PATH, None
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        elts = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        for extra in elts[1:]:
            if isinstance(extra, ast.Call) and getattr(extra.func, "id", "") == "Choice":
                return CHOICE, ast.unparse(extra.args[0]) if extra.args else None
        return annotation_kind(elts[0])
    return "unknown", ast.unparse(annotation)


# --- files that must be listed in CMake ---------------------------------------------------------------
def project_files(*folders: str) -> list[str]:
    """Files under ``folders`` that belong to the project (tracked or not ignored by git)."""
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *folders],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.split("\n")
        files = sorted({f for f in out if f and (REPO / f).is_file()})
    else:
        files = sorted(
            str(p.relative_to(REPO)).replace(os.sep, "/")
            for folder in folders
            for p in (REPO / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
    return [f for f in files if not any(part.startswith(".") for part in f.split("/"))]


def expected_lists() -> dict[str, list[str]]:
    lib = project_files(LIB)
    return {
        "MODULE_PYTHON_SCRIPTS": sorted(
            f.split("/", 1)[1] for f in project_files(MODULE_NAME) if f.endswith(".py")
        ),
        "LIB_PYTHON_SCRIPTS": [f for f in lib if f.endswith(".py")],
        "MODULE_PYTHON_RESOURCES": sorted(project_files("Resources") + [f for f in lib if not f.endswith(".py")]),
    }


def cmake_lists(text: str) -> dict[str, list[str]]:
    """``set(NAME item item ...)`` blocks of a CMake file (comments dropped)."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return {m.group(1): m.group(2).split() for m in re.finditer(r"set\(\s*(\w+)\s+([^)]*)\)", text)}


def update_cmake() -> None:
    text = MODULE_CMAKE.read_text()
    for name, files in expected_lists().items():
        if name == "MODULE_PYTHON_SCRIPTS":
            continue
        pattern = re.compile(rf"(  # BEGIN {name} \(generated\)\n).*?(  # END {name}\n)", re.S)
        body = "".join(f"  {f}\n" for f in files)
        text, n = pattern.subn(lambda m, body=body: m.group(1) + body + m.group(2), text)
        assert n == 1, f"markers for {name} not found in {MODULE_CMAKE}"
    MODULE_CMAKE.write_text(text)


# --- the module file ------------------------------------------------------------------------------------
def test_module_parses_and_passes_ruff():
    module_tree()
    ruff = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    result = subprocess.run([str(ruff), "check", str(MODULE_FILE)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_is_thin_and_installs_nothing_at_import():
    tree = module_tree()
    assert len(MODULE_FILE.read_text().splitlines()) < 700, "keep the GUI thin: move code into the library"
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {MODULE_NAME, f"{MODULE_NAME}Widget", f"{MODULE_NAME}Logic", f"{MODULE_NAME}Test",
            f"{MODULE_NAME}ParameterNode"} <= classes
    for node in tree.body:  # module-level statements: no installs, no torch
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        source = ast.unparse(node)
        for forbidden in ("pip_install", "installTorch", "import torch", "PyTorchUtils"):
            assert forbidden not in source, f"module-level code must not do {forbidden!r}: {source}"


def test_module_metadata():
    tree = module_tree()
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == MODULE_NAME)
    values = {}
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            values[node.targets[0].attr] = ast.unparse(node.value)
    assert "'Kidney Tumor Seg'" in values["title"]
    assert "'Segmentation'" in values["categories"]
    assert values["contributors"].strip("[]")
    for needle in ("Qiao", "Zhao", "Liu", "KiTS19", "Heller", "1904.00445"):
        assert needle in values["helpText"], needle
    assert len(values["acknowledgementText"]) > 40
    assert "Icons/KidneyTumorSeg.png" in values["icon"] or "icon" in values
    from PIL import Image

    with Image.open(ICON_FILE) as icon:
        assert icon.size == (128, 128) and icon.format == "PNG"


def test_every_ui_widget_the_code_names_exists_with_a_compatible_class():
    widgets = ui_widgets()
    tree = module_tree()
    uses = ui_uses(tree)
    assert uses, "the module uses no self.ui widgets?"
    for name, members in uses.items():
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        cls = widgets[name].get("class")
        assert cls in CLASS_BASES, f"{name}: unknown widget class {cls}; add it to CLASS_BASES"
        for member in members:
            assert has_member(cls, member), f"self.ui.{name}.{member}: {cls} has no such member"
    for name, signal in ui_connections(tree):
        cls = widgets[name].get("class")
        assert signal in SIGNALS, f"unknown signal {signal}; add it to SIGNALS"
        assert SIGNALS[signal] in ancestors(cls), f"{name} ({cls}) does not emit {signal}"


def test_parameter_bindings_name_real_parameters_and_compatible_widgets():
    widgets = ui_widgets()
    fields = parameter_fields(module_tree())
    bound = {}
    for name, widget in widgets.items():
        param = widget_property(widget, "SlicerParameterName")
        if param is None:
            continue
        assert param in fields, f"{name} binds '{param}', which is not a parameter ({sorted(fields)})"
        assert param not in bound, f"'{param}' is bound to both {bound[param]} and {name}"
        bound[param] = name
        cls = widget.get("class")
        assert cls in CONNECTORS, f"{name}: {cls} cannot be bound to a parameter"
        kind, detail = annotation_kind(fields[param])
        assert CONNECTORS[cls] == kind, f"{name} ({cls}) cannot show '{param}' ({kind})"
        if kind == NODE_COMBO:
            assert widget_property(widget, "nodeTypes") == [detail], f"{name} nodeTypes must be [{detail}]"
        if kind == CHOICE:
            assert detail, f"'{param}' needs Choice([...]) values for {name}"
    assert {"inputVolume", "outputSegmentation", "device"} <= set(bound)


def test_parameters_the_code_uses_exist():
    tree = module_tree()
    fields = parameter_fields(tree)
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "p":
                used.add(node.attr)
            if isinstance(base, ast.Attribute) and base.attr == "_parameterNode":
                used.add(node.attr)
    used -= {"connectGui", "disconnectGui"}
    assert used and used <= set(fields), f"unknown parameters: {sorted(used - set(fields))}"


def test_ui_file_declares_its_custom_widgets_and_gives_mrml_widgets_the_scene():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    mrml_widgets = {w.get("name") for w in root.iter("widget") if w.get("class").startswith("qMRML")} - {
        top.get("name")
    }
    wired = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml_widgets == wired
    expected = {
        "inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
        "deviceComboBox": "QComboBox", "weightsPathLineEdit": "ctkPathLineEdit", "applyButton": "QPushButton",
        "progressBar": "QProgressBar", "statusLabel": "QLabel", "show3DButton": "QPushButton",
        "editInSegmentEditorButton": "QPushButton", "resultsTableView": "qMRMLTableView",
        "allowNonCTCheckBox": "QCheckBox", "fastModeCheckBox": "QCheckBox", "threadsSpinBox": "QSpinBox",
        "exportFolderPathLineEdit": "ctkPathLineEdit", "exportForTrainingButton": "QPushButton",
        "detailsCollapsibleButton": "ctkCollapsibleButton", "logTextEdit": "QPlainTextEdit",
        "copyLogButton": "QPushButton",
    }
    widgets = ui_widgets()
    for name, cls in expected.items():
        assert widgets[name].get("class") == cls, name
    assert any(w.get("class") == "ctkCollapsibleButton" for w in widgets.values())


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _calls(node: ast.AST, attr: str) -> list[ast.Call]:
    return [c for c in ast.walk(node) if isinstance(c, ast.Call) and getattr(c.func, "attr", None) == attr]


def test_every_connected_slot_is_a_method_of_the_widget():
    tree = module_tree()
    widget = _class(tree, f"{MODULE_NAME}Widget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    connected = {}
    for call in _calls(widget, "connect"):
        if len(call.args) == 2 and isinstance(call.args[1], ast.Attribute) and isinstance(call.args[0], ast.Constant):
            connected[ast.unparse(call.func.value)] = call.args[1].attr
    for sender in ("self.ui.exportForTrainingButton", "self.ui.copyLogButton", "self.ui.applyButton",
                   "self.ui.exportFolderPathLineEdit"):
        assert sender in connected, f"{sender} is not connected"
    for sender, slot in connected.items():
        assert slot in methods, f"{sender} is connected to self.{slot}, which the widget does not define"
    assert "clipboard" in ast.unparse(_method(widget, connected["self.ui.copyLogButton"]))
    export = ast.unparse(_method(widget, connected["self.ui.exportForTrainingButton"]))
    assert "self.logic.exportForTraining(" in export and "getExistingDirectory" in export


def test_advanced_options_reach_the_background_run():
    tree = module_tree()
    bound = {widget_property(w, "SlicerParameterName") for w in ui_widgets().values()}
    assert {"allowNonCT", "fastMode", "threads"} <= bound
    apply_ = _method(_class(tree, f"{MODULE_NAME}Widget"), "onApplyButton")
    (start,) = _calls(apply_, "startBackground")
    passed = {k.arg: ast.unparse(k.value) for k in start.keywords}
    assert passed["allowNonCT"] == "p.allowNonCT" and passed["noMirror"] == "p.fastMode"
    assert passed["threads"].startswith("p.threads")
    logic_start = _method(_class(tree, f"{MODULE_NAME}Logic"), "startBackground")
    (job,) = [c for c in ast.walk(logic_start) if isinstance(c, ast.Call)
              and getattr(c.func, "id", None) == "BackgroundSegmentation"]
    assert {"allow_non_ct", "no_mirror", "threads"} <= {k.arg for k in job.keywords}


def test_nothing_is_installed_or_waited_for_on_the_gui_thread():
    source = MODULE_FILE.read_text()
    for blocking in ("pip_install", "installTorch", "_executePythonModule", "subprocess", "time.sleep("):
        assert blocking not in source.split("class KidneyTumorSegTest")[0], f"the GUI must not call {blocking}"
    widget = _class(module_tree(), f"{MODULE_NAME}Widget")
    assert _calls(widget, "BackgroundInstall") or "BackgroundInstall(" in ast.unparse(widget)
    for method in widget.body:
        if not isinstance(method, ast.FunctionDef) or method.name == "cleanup":
            continue  # closing Slicer may wait briefly for the child
        assert not _calls(method, "wait"), f"{method.name} waits for a child process"
        for call in _calls(method, "cancel"):
            assert not any(k.arg == "wait" for k in call.keywords), f"{method.name} waits while cancelling"


def test_sample_data_is_registered_at_startup_and_made_locally():
    tree = module_tree()
    init = ast.unparse(_method(_class(tree, MODULE_NAME), "__init__"))
    assert "slicer.app.connect('startupCompleted()', registerSampleData)" in init
    register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    (call,) = _calls(register, "registerCustomSampleDataSource")
    keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
    assert keywords["customDownloader"] and "https://" not in ast.unparse(register)  # nothing is downloaded
    thumbnail = re.search(r"resourcePath\('([^']+)'\)", keywords["thumbnailFileName"]).group(1)
    from PIL import Image

    with Image.open(REPO / "Resources" / thumbnail) as image:
        assert image.format == "PNG" and min(image.size) >= 64


def test_extension_screenshot_and_icon_named_in_cmake_are_real_files():
    from PIL import Image

    lists = cmake_lists(TOP_CMAKE.read_text())
    urls = [u.strip('"') for u in lists["EXTENSION_SCREENSHOTURLS"]] + [lists["EXTENSION_ICONURL"][0].strip('"')]
    for url in urls:
        relative = re.search(r"/(?:main|master)/(.+)$", url).group(1)
        path = REPO / relative
        assert path.is_file(), f"{url} names {relative}, which is not in the repository"
        with Image.open(path) as image:
            assert image.format == "PNG"
            if "Screenshots" in relative:
                assert image.size[0] >= 600 and image.size[1] >= 300, f"{relative} is too small for a screenshot"


def test_mrml_bridge_imports_no_gui():
    forbidden_modules = {"qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.app"}
    for path in sorted((REPO / LIB / "mrml").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                names = []
            for name in names:
                assert name not in forbidden_modules and not name.startswith(("qt.", "ctk.")), f"{path.name}: {name}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                assert node.attr not in ("app", "modules"), f"{path.name} uses slicer.{node.attr}"
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "Popen":
                assert not any(k.arg == "shell" for k in node.keywords), f"{path.name}: no shell"


# --- finding the library and the resources ---------------------------------------------------------------
def _path_helpers_source() -> str:
    tree = module_tree()
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("_ensureLibraryImportable", "resourcePath")]
    assert len(wanted) == 2
    return "\n\n".join(ast.unparse(n) for n in wanted)


def _locate(module_dir: Path) -> tuple[str, str]:
    """Run the module's own path helpers in a bare interpreter (no site-packages), as if from module_dir."""
    code = (
        "import importlib.util, os, sys\n"
        f"MODULE_DIR = {str(module_dir)!r}\n"
        + _path_helpers_source()
        + "\n_ensureLibraryImportable()\n"
        "spec = importlib.util.find_spec('KidneyTumorSegLib')\n"
        "print(spec.origin if spec else 'NOT FOUND')\n"
        "print(resourcePath('UI/KidneyTumorSeg.ui'))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                         cwd=str(module_dir.anchor))
    assert out.returncode == 0, out.stderr
    origin, resource = out.stdout.strip().splitlines()
    return origin, resource


def test_library_and_resources_are_found_from_a_source_checkout():
    origin, resource = _locate(REPO / MODULE_NAME)
    assert Path(origin) == REPO / LIB / "__init__.py"
    assert Path(resource) == UI_FILE


def test_library_and_resources_are_found_in_an_installed_extension(tmp_path):
    # the layout the CMake lists install: everything beside the module script
    installed = tmp_path / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    (installed / LIB).mkdir(parents=True)
    (installed / LIB / "__init__.py").write_text("")
    (installed / "Resources" / "UI").mkdir(parents=True)
    shutil.copy(UI_FILE, installed / "Resources" / "UI" / UI_FILE.name)
    shutil.copy(MODULE_FILE, installed / MODULE_FILE.name)
    origin, resource = _locate(installed)
    assert Path(origin) == installed / LIB / "__init__.py"
    assert Path(resource) == installed / "Resources" / "UI" / UI_FILE.name


# --- CMake ------------------------------------------------------------------------------------------------
def test_cmake_lists_name_every_file_nothing_missing_nothing_stale():
    lists = cmake_lists(MODULE_CMAKE.read_text())
    hint = "run: python Testing/test_module_static.py --update-cmake"
    for name, expected in expected_lists().items():
        listed = [f.replace("${MODULE_NAME}", MODULE_NAME) for f in lists.get(name, [])]
        assert len(listed) == len(set(listed)), f"{name} lists a file twice"
        missing = sorted(set(expected) - set(listed))
        stale = sorted(set(listed) - set(expected))
        assert not missing, f"{name} misses {missing} ({hint})"
        assert not stale, f"{name} names files that do not exist: {stale} ({hint})"
    assert lists["MODULE_PYTHON_SCRIPTS"] == ["${MODULE_NAME}.py"]
    assert "Resources/UI/KidneyTumorSeg.ui" in lists["MODULE_PYTHON_RESOURCES"]
    assert "Resources/Icons/KidneyTumorSeg.png" in lists["MODULE_PYTHON_RESOURCES"]


def test_cmake_builds_the_module_with_tests_and_installs_the_library_beside_it():
    text = re.sub(r"#.*", "", MODULE_CMAKE.read_text())
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1).split()
    assert build[:2] == ["NAME", "${MODULE_NAME}"] and "WITH_GENERIC_TESTS" in build
    assert "${MODULE_PYTHON_SCRIPTS}" in build
    lib = re.search(r"ctkMacroCompilePythonScript\((.*?)\n\s*\)", text, re.S).group(1).split()
    args = dict(zip(lib[::2], lib[1::2]))
    assert args["SCRIPTS"] == '"${LIB_PYTHON_SCRIPTS}"' and args["RESOURCES"] == '"${MODULE_PYTHON_RESOURCES}"'
    assert args["SOURCE_DIR"] == "${KidneyTumorSeg_ROOT_DIR}"
    assert args["DESTINATION_DIR"] == "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    assert args["INSTALL_DIR"] == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    assert "NO_INSTALL_SUBDIR" in lib
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.S)
    assert re.search(r"set\(MODULE_NAME KidneyTumorSeg\)", text)


def test_top_level_cmake_describes_the_extension():
    text = TOP_CMAKE.read_text()
    lists = cmake_lists(text)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                "EXTENSION_SCREENSHOTURLS"):
        assert lists.get(key), f"{key} is empty"
    assert lists["EXTENSION_CATEGORY"] == ['"Segmentation"']
    assert "PyTorch" in lists["EXTENSION_DEPENDS"][0]
    assert lists["EXTENSION_ICONURL"][0].strip('"').endswith("Resources/Icons/KidneyTumorSeg.png")
    for needle in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(KidneyTumorSeg)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in text, needle
    assert re.search(r"project\(KidneyTumorSeg\)", text)


if __name__ == "__main__":
    if "--update-cmake" in sys.argv:
        update_cmake()
        print(f"updated {MODULE_CMAKE.relative_to(REPO)}")
    else:
        print(__doc__)
