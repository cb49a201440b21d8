"""What an analysis took for granted because the source's header left it empty.

Routing (:func:`dicom_node.routing.decide`) records an :class:`Assumption` for an unlabelled chest
film; the SR states it (``sr._image_library``), ``dicom-node results`` and the console show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydicom.dataset import Dataset


class Assumption(StrEnum):
    """What an analysis took for granted because the source's header left it empty.

    Routing (``dicom_node.routing.decide``) assumes a chest or a frontal view only when Body Part
    Examined (0018,0015) or View Position (0018,5101) is empty or absent, never in place of a value
    the header gives. The value is the sentence the SR, ``dicom-node results`` and the admin console
    show; the SR also codes what was assumed (see ``sr._image_library``).
    """

    CHEST = "chest assumed, not read: Body Part Examined is empty"
    FRONTAL = "frontal view assumed, not read: View Position is empty"

    @property
    def keyword(self) -> str:
        """The attribute whose empty value this assumption stands in for."""
        return "BodyPartExamined" if self is Assumption.CHEST else "ViewPosition"


def check_assumptions(source: Dataset, assumptions: Sequence[Assumption]) -> tuple[Assumption, ...]:
    """Each assumption once, and only for an attribute the source leaves empty (a value the header
    gives is read, never overridden)."""
    checked: list[Assumption] = []
    for i, assumption in enumerate(assumptions):
        if not isinstance(assumption, Assumption):
            raise TypeError(f"assumptions[{i}] must be an Assumption, got {type(assumption).__name__}")
        if str(source.get(assumption.keyword, "") or "").strip():
            raise ValueError(f"assumptions[{i}] is {assumption.name}, but source.{assumption.keyword} is not "
                             "empty: only an empty value is assumed")
        if assumption not in checked:
            checked.append(assumption)
    return tuple(checked)
