"""The evaluation report as the model page shows it, and which of its files may be served.

TrainedModel.evaluation is written once at registration (ml.evaluate); this turns it into what the
template prints: percentages, the reliability diagram's geometry (inline SVG: no script, no request)
and the gallery's URLs.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from django.urls import reverse

from webapp.registry.models import TrainedModel

REPORT_DIR = "report"  # ml.evaluate.REPORT_DIR (not imported: the page should not load torch)
CONTENT_TYPES = {".png": "image/png", ".wav": "audio/wav"}

# Reliability diagram, in SVG user units: a square plot with room for the axes' ticks and titles.
PLOT = 240
LEFT, TOP, BOTTOM = 44, 10, 40
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def report_files(evaluation: dict) -> set[str]:
    """Names (within report/) of the files the evaluation lists: the only ones the report view serves."""
    names = set()
    for entry in evaluation.get("misclassified") or []:
        for key in ("file", "spectrogram"):
            path = PurePosixPath(str(entry.get(key) or ""))
            if len(path.parts) == 2 and path.parts[0] == REPORT_DIR and path.suffix in CONTENT_TYPES:
                names.add(path.name)
    return names


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def report_context(model: TrainedModel) -> dict:
    """What templates/registry/_report.html prints: {"error": reason} when there is no report."""
    evaluation = model.evaluation or {}
    if "error" in evaluation:
        return {"error": str(evaluation["error"])}
    if not evaluation.get("per_class"):
        return {"error": "this model was stored before evaluation reports were made"}
    calibration = evaluation.get("calibration") or {}
    return {
        "samples": evaluation["samples"],
        "accuracy": _percent(evaluation["accuracy"]),
        "macro_f1": f"{evaluation['macro_f1']:.3f}",
        "weighted_f1": f"{evaluation['weighted_f1']:.3f}",
        "ece": _percent(calibration.get("ece")),
        "misclassified_total": evaluation.get("misclassified_total", 0),
        "per_class": [
            {**row, "precision_text": _percent(row["precision"]), "recall_text": _percent(row["recall"]),
             "f1_text": f"{row['f1']:.3f}"}
            for row in evaluation["per_class"]
        ],
        "reliability": _reliability(calibration.get("bins") or []),
        "gallery": [_example(model, entry) for entry in evaluation.get("misclassified") or []],
    }


def _file_url(model: TrainedModel, path: str | None) -> str:
    return reverse("models:report_file", args=[model.pk, PurePosixPath(path).name]) if path else ""


def _example(model: TrainedModel, entry: dict) -> dict:
    return {**entry, "confidence_text": _percent(entry["confidence"]), "url": _file_url(model, entry.get("file")),
            "spectrogram_url": _file_url(model, entry.get("spectrogram"))}


def _reliability(bins: list[dict]) -> dict:
    """SVG geometry: per non-empty bin a bar up to its accuracy and a band from there to its mean
    confidence (the gap; above the bar = overconfident), against the diagonal of perfect calibration."""
    def x(v: float) -> float:
        return round(LEFT + v * PLOT, 1)

    def y(v: float) -> float:
        return round(TOP + (1 - v) * PLOT, 1)

    bars = []
    for b in bins:
        if not b.get("count"):
            continue
        accuracy, confidence = b["accuracy"], b["confidence"]
        bars.append({
            **b,
            "x": x(b["lower"]), "width": round((b["upper"] - b["lower"]) * PLOT, 1),
            "y": y(accuracy), "height": round(accuracy * PLOT, 1),
            "gap_y": y(max(accuracy, confidence)), "gap_height": round(abs(confidence - accuracy) * PLOT, 1),
            "range": f"{b['lower'] * 100:.0f}–{b['upper'] * 100:.0f} %",
            "confidence_text": _percent(confidence), "accuracy_text": _percent(accuracy),
        })
    return {
        "bars": bars,
        "width": LEFT + PLOT + 10, "height": TOP + PLOT + BOTTOM,
        "left": LEFT, "top": TOP, "right": x(1.0), "bottom": y(0.0), "plot": PLOT,
        "tick_x": LEFT - 4, "tick_y": y(0.0) + 14,  # where the y axis' and the x axis' tick labels sit
        "ticks": [{"label": f"{t * 100:.0f}", "x": x(t), "y": y(t)} for t in TICKS],
        "x_title": (LEFT + PLOT / 2, TOP + PLOT + 34), "y_title": (12, TOP + PLOT / 2),
    }
