"""Several data sources in one manifest: map each source's labels to the task's classes, tag rows.

A multi-source recipe lists ``data.sources`` (see ``config.SourceConfig``); ``readers.load_manifest``
reads each with the ordinary readers, then ``map_labels`` and ``combine`` (here) make one manifest
with a ``sources`` column and patient ids prefixed by the source name (``nih:00000013``), so two
sources' "person1" never merge.

Label mapping rule (one label per row in the result; binary or multiclass tasks):

- a row's source labels are its positive classes as read; a multi-label row with none (NIH's
  "No Finding") has the single label "No Finding";
- each label maps through ``label_map`` to a task class, or to null (drop), or is absent (unmapped,
  treated like null); an empty ``label_map`` keeps every label as it is;
- the row is class C when exactly one positive (non-normal) class C is mapped from its labels,
  whatever else it has ("Effusion|Pneumonia" -> PNEUMONIA);
- the row is the normal class only when every one of its labels maps to it ("No Finding" ->
  NORMAL, but "No Finding|Effusion" is dropped);
- any other row (only unmapped / null labels, or two different positive classes) is dropped and
  listed in ``Manifest.dropped`` with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lungxray.data.manifest import NEGATIVE_NAMES, NO_FINDING_NAMES, Manifest, one_hot, order_classes
from lungxray.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lungxray.config import SourceConfig

NO_FINDING = "No Finding"


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", " ").replace("_", " ")


def _lookup(label: str, label_map: dict[str, Any]) -> tuple[bool, str | None]:
    """(found, class or None) for one source label; "No Finding" matches any spelling of it."""
    if label in label_map:
        return True, label_map[label]
    for key, value in label_map.items():
        if _norm(key) == _norm(label) or (_norm(label) in NO_FINDING_NAMES and _norm(key) in NO_FINDING_NAMES):
            return True, value
    return False, None


def map_row(labels: Sequence[str], label_map: dict[str, Any]) -> tuple[str | None, str]:
    """(task class or None = drop, reason) for one row's source labels, by the rule in the module doc."""
    if not label_map:
        return (labels[0], "") if len(labels) == 1 else (None, f"several labels {list(labels)}")
    mapped = [_lookup(lab, label_map) for lab in labels]
    classes = {c for found, c in mapped if found and c is not None}
    positives = {c for c in classes if _norm(c) not in NEGATIVE_NAMES}
    if len(positives) == 1:
        return positives.pop(), ""
    if len(positives) > 1:
        return None, f"labels {list(labels)} map to several classes {sorted(positives)}"
    if len(classes) == 1 and all(found and c is not None for found, c in mapped):
        return classes.pop(), ""
    return None, f"labels {list(labels)} not mapped to a task class"


def map_labels(m: Manifest, source: SourceConfig) -> Manifest:
    """``m`` (one source as read) with its rows' labels mapped, unmapped rows dropped, rows tagged with
    the source name and patients prefixed ``<name>:``. Labels are one-hot over the mapped class names
    in ``order_classes`` order (aligned across sources later by ``combine``)."""
    name = source.source_name
    raw = [s.split("|") if s else [NO_FINDING] for s in m.label_strings()]
    keep, targets, dropped = [], [], list(m.dropped)
    for i, labels in enumerate(raw):
        cls, why = map_row(labels, dict(source.label_map))
        if cls is None:
            dropped.append((m.paths[i], f"{name}: {why}"))
        else:
            keep.append(i)
            targets.append(str(cls))
    if not keep:
        raise DataError(f"source {name!r} ({source.path or source.csv}): no row maps to a task class; check label_map.")
    sub = m.subset(np.array(keep, dtype=np.int64))
    classes = order_classes(targets)
    return Manifest(
        paths=sub.paths,
        labels=one_hot([[t] for t in targets], classes),
        classes=classes,
        task="multiclass" if len(classes) != 2 else "binary",
        patients=tuple(f"{name}:{p}" for p in sub.patients),
        splits=sub.splits,
        root=m.root,
        dropped=tuple(dropped),
        sources=(name,) * len(sub),
    )


def combine(parts: Sequence[Manifest], task: str | None = None) -> Manifest:
    """One manifest of several mapped sources (``map_labels``), classes aligned by name, rows in order."""
    if task == "multilabel":
        raise ConfigError("data.sources supports binary and multiclass tasks; multilabel is not supported yet.")
    classes = order_classes(c for m in parts for c in m.classes)
    if len(classes) < 2:
        raise DataError(f"the sources together have one class ({', '.join(classes)}); a classifier needs two.")
    labels = [str(lab) for m in parts for lab in np.array(m.classes)[np.argmax(m.labels, axis=1)]]
    task = task or ("binary" if len(classes) == 2 else "multiclass")
    if task == "binary" and len(classes) != 2:
        raise DataError(f"task binary needs two classes, but the sources map to {list(classes)}.")
    return Manifest(
        paths=tuple(p for m in parts for p in m.paths),
        labels=one_hot([[lab] for lab in labels], classes),
        classes=classes,
        task=task,
        patients=tuple(p for m in parts for p in m.patients),
        splits=tuple(s for m in parts for s in m.splits),
        root="sources: " + ", ".join(m.sources[0] for m in parts if m.sources),
        dropped=tuple(d for m in parts for d in m.dropped),
        sources=tuple(s for m in parts for s in m.sources),
    )
