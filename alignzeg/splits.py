"""Seen/unseen class splits, stored by class **name** in JSON files.

A split file holds ``name``, ``dataset``, ``source``, ``classes`` (the full label space in label order)
and ``unseen`` (names). Seen classes are derived: every class not unseen, in label order. Splits that
ship with the suite live in ``alignzeg/splits/*.json`` and are addressed by their stem
(``voc12-15s5u``); any other split is addressed by its path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_DIR = Path(__file__).with_name("splits")


@dataclass(frozen=True)
class Split:
    """A zero-shot split of a label space into seen and unseen classes."""

    name: str
    classes: tuple[str, ...]
    unseen: tuple[str, ...]
    dataset: str = ""
    source: str = ""
    stuff: tuple[str, ...] = ()   # the amorphous "stuff" classes, where the dataset names them
    seen: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        where = f"split {self.name!r}"
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"{where}: duplicate class names {dup}")
        missing = [u for u in self.unseen if u not in self.classes]
        if missing:
            raise ValueError(f"{where}: unseen classes {missing} are not in its 'classes'")
        if len(set(self.unseen)) != len(self.unseen):
            dup = sorted({c for c in self.unseen if self.unseen.count(c) > 1})
            raise ValueError(f"{where}: duplicate names in 'unseen': {dup}")
        bad_stuff = [c for c in self.stuff if c not in self.classes]
        if bad_stuff:
            raise ValueError(f"{where}: stuff classes {bad_stuff} are not in its 'classes'")
        unseen = set(self.unseen)
        object.__setattr__(self, "seen", tuple(c for c in self.classes if c not in unseen))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def seen_ids(self) -> list[int]:
        """Label ids (positions in ``classes``) of the seen classes."""
        unseen = set(self.unseen)
        return [i for i, c in enumerate(self.classes) if c not in unseen]

    @property
    def unseen_ids(self) -> list[int]:
        unseen = set(self.unseen)
        return [i for i, c in enumerate(self.classes) if c in unseen]

    @property
    def stuff_ids(self) -> list[int]:
        """Label ids of the stuff classes (empty where the split names none)."""
        stuff = set(self.stuff)
        return [i for i, c in enumerate(self.classes) if c in stuff]

    def to_dict(self) -> dict:
        out = {"name": self.name, "dataset": self.dataset, "source": self.source,
               "classes": list(self.classes), "unseen": list(self.unseen)}
        if self.stuff:
            out["stuff"] = list(self.stuff)
        return out

    @classmethod
    def from_dict(cls, data: dict, origin: str = "<dict>") -> "Split":
        for key in ("classes", "unseen"):
            if key not in data:
                raise ValueError(f"{origin}: split is missing the field {key!r}")
            if not isinstance(data[key], list) or not all(isinstance(c, str) for c in data[key]):
                raise ValueError(f"{origin}: field {key!r} must be a list of class names")
        return cls(name=str(data.get("name", Path(origin).stem)), classes=tuple(data["classes"]),
                   unseen=tuple(data["unseen"]), dataset=str(data.get("dataset", "")),
                   source=str(data.get("source", "")), stuff=tuple(data.get("stuff") or ()))

    def save(self, path: str | Path) -> None:
        from alignzeg.utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def available_splits() -> list[str]:
    return sorted(p.stem for p in SPLIT_DIR.glob("*.json"))


def load_split(name_or_path: str | Path) -> Split:
    """Load a split by its shipped name (``voc12-15s5u``) or from a JSON path."""
    path = Path(name_or_path)
    if not path.suffix == ".json" or not path.exists():
        shipped = SPLIT_DIR / f"{name_or_path}.json"
        if shipped.exists():
            path = shipped
        elif not path.exists():
            raise FileNotFoundError(
                f"split {str(name_or_path)!r}: neither a file nor a shipped split "
                f"(shipped: {', '.join(available_splits())})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a split file holds a JSON object, found {type(data).__name__}")
    try:
        return Split.from_dict(data, origin=str(path))
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: {err}") from err   # name the file, not only the split
