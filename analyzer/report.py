"""The report document every renderer consumes: sections of labelled figures and tables, and the
data of its plots.

A figure that was not measured carries ``value=None`` and says why in ``source``; renderers
print it as missing, never as a number. A plot is data only (frames and labels); renderers/plots.py
draws it.
"""
from __future__ import annotations

import dataclasses

import polars as pl


@dataclasses.dataclass
class Figure:
    label: str
    value: str | None  # formatted; None = not measured
    source: str = ""  # where it comes from, at what resolution (or why it is missing)


@dataclasses.dataclass
class Section:
    title: str
    figures: list[Figure] = dataclasses.field(default_factory=list)
    table: pl.DataFrame | None = None
    children: list[Section] = dataclasses.field(default_factory=list)

    def add(self, label: str, value: str | None, source: str = "") -> Section:
        self.figures.append(Figure(label, value, source))
        return self

    def child(self, title: str) -> Section:
        sec = Section(title)
        self.children.append(sec)
        return sec


@dataclasses.dataclass
class Plot:
    """One chart's data: ``kind`` names the drawing in renderers/plots.py, ``frames`` hold its points
    (explicit columns and units), ``labels`` its title and axis names."""
    file: str  # PNG file name, written beside the report
    kind: str  # itl, cache, tp_scaling
    frames: dict[str, pl.DataFrame]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Report:
    name: str  # file stem: story, radix, ...
    title: str
    sections: list[Section] = dataclasses.field(default_factory=list)
    plots: list[Plot] = dataclasses.field(default_factory=list)

    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec


def ms(ns) -> str | None:
    return None if ns is None else f"{ns / 1e6:.3f} ms"


def pct(x) -> str | None:
    return None if x is None else f"{x:.1f}%"
