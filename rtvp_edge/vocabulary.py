"""Defect vocabulary of the glass-container line: class names, text prompts, seen/unseen split.

One place for the class list so the rig, the data sets, training, export and the runtime agree.
The first five classes are the AAAI'25 paper's glass-container classes ("seen" in the open protocol);
the others are further glass defects that the open protocol keeps for validation only ("unseen").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DefectClass:
    """One vocabulary entry.

    Args:
        name: class name as it appears in data sets and events (e.g. ``"black spot"``).
        prompt: the text prompt given to the text encoder for this class.
        seen: True for classes trained on in the open protocol; False for held-out (unseen) classes.
    """

    name: str
    prompt: str
    seen: bool = True


GLASS_DEFECTS: tuple[DefectClass, ...] = (
    DefectClass("oil", "a smear of oil on the glass container"),
    DefectClass("black spot", "a small black spot inside the glass"),
    DefectClass("bubble", "a small round air bubble trapped in the glass"),
    DefectClass("plastering thread", "a thin thread of unmelted glass plastered on the wall"),
    DefectClass("quenched grain", "a white granular quench mark on the glass"),
    DefectClass("crack", "a sharp crack in the glass wall", seen=False),
    DefectClass("stone", "an opaque stone inclusion in the glass", seen=False),
    DefectClass("scratch", "a long thin scratch on the glass surface", seen=False),
)


def class_names(classes: tuple[DefectClass, ...] = GLASS_DEFECTS) -> list[str]:
    return [c.name for c in classes]


def seen_classes(classes: tuple[DefectClass, ...] = GLASS_DEFECTS) -> tuple[DefectClass, ...]:
    return tuple(c for c in classes if c.seen)


def unseen_classes(classes: tuple[DefectClass, ...] = GLASS_DEFECTS) -> tuple[DefectClass, ...]:
    return tuple(c for c in classes if not c.seen)
