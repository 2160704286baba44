"""The results table: one row per side with the volumes and the tumour's largest diameter.

Values come straight from the engine's report (``report["sides"][side]``), so the table and the
JSON report always agree.
"""

from __future__ import annotations

import math

from ..terminology import SIDES

# (report key, column name, unit, description); the first column is the side.
COLUMNS = (
    ("kidney_without_tumour_ml", "Kidney (without tumor) volume", "mL", "Kidney tissue without its tumors"),
    ("kidney_with_tumour_ml", "Kidney with tumor volume", "mL", "Whole kidney including its tumors"),
    ("tumour_ml", "Tumor volume", "mL", "All tumor tissue of this kidney"),
    ("tumour_diameter_mm", "Tumor largest diameter", "mm", "Largest diameter of the largest tumor"),
    ("tumour_count", "Tumor count", "", "Number of separate tumors"),
)
SIDE_COLUMN = "Side"


def column_title(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit else name


def table_rows(report: dict) -> list[dict]:
    """The rows the table shows: side name and the report's value per column (NaN if absent)."""
    rows = []
    for side in SIDES:
        values = (report or {}).get("sides", {}).get(side)
        if not values:
            continue
        row = {SIDE_COLUMN: side.capitalize()}
        for key, name, unit, _ in COLUMNS:
            value = values.get(key)
            row[column_title(name, unit)] = float(value) if value is not None else math.nan
        rows.append(row)
    return rows


def update_results_table(report: dict, table_node=None, scene=None, name: str = "Kidney tumor results"):
    """Fill ``table_node`` (a new one in ``scene`` when None) from the report; returns the node."""
    import slicer
    import vtk

    if table_node is None:
        scene = scene if scene is not None else slicer.mrmlScene
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    rows = table_rows(report)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        table = table_node.GetTable()
        side_col = vtk.vtkStringArray()
        side_col.SetName(SIDE_COLUMN)
        table.AddColumn(side_col)
        titles = [column_title(name_, unit) for _, name_, unit, _ in COLUMNS]
        for title in titles:
            col = vtk.vtkDoubleArray()
            col.SetName(title)
            table.AddColumn(col)
        table.SetNumberOfRows(len(rows))
        for r, row in enumerate(rows):
            side_col.SetValue(r, row[SIDE_COLUMN])
            for c, title in enumerate(titles, start=1):
                table.GetColumn(c).SetValue(r, row[title])
        for title, (_, _, unit, description) in zip(titles, COLUMNS):
            table_node.SetColumnDescription(title, description)
            if unit:
                table_node.SetColumnUnitLabel(title, unit)
        table_node.SetUseColumnTitleAsColumnHeader(True)
        table_node.SetLocked(True)
        table.Modified()
    finally:
        table_node.EndModify(was_modifying)
    return table_node


def read_results_table(table_node) -> list[dict]:
    """The table's rows as dicts (column title -> value), for tests and scripts."""
    table = table_node.GetTable()
    out = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            col = table.GetColumn(c)
            value = col.GetValue(r)
            row[col.GetName()] = value if isinstance(value, str) else float(value)
        out.append(row)
    return out
