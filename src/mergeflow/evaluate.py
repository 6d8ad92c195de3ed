"""Top-1 accuracy of an image encoder on a task's split with that task's head."""

from __future__ import annotations

import torch

from mergeflow.models.classifier import ImageClassifier, normalize_images


@torch.inference_mode()
def accuracy(classifier: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 500,
             device: torch.device | str = "cpu") -> float:
    """Fraction of ``images`` whose arg-max logit is the label."""
    classifier = classifier.to(device).eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = normalize_images(images[start:start + batch_size].to(device))
        pred = classifier(x).argmax(-1).cpu()
        correct += int((pred == labels[start:start + batch_size]).sum())
    return correct / max(1, len(labels))


def summarise(per_task: dict[str, dict], individual: dict[str, dict] | None = None) -> dict:
    """Average accuracy; with the individual experts' accuracies also normalised accuracy and the drop's std."""
    accs = {t: v["accuracy"] for t, v in per_task.items()}
    out = {"average": sum(accs.values()) / len(accs)}
    if individual:
        norm = {t: accs[t] / individual[t]["accuracy"] if individual[t]["accuracy"] > 0 else 0.0 for t in accs}
        drops = torch.tensor([individual[t]["accuracy"] - accs[t] for t in accs], dtype=torch.float64)
        out["normalized"] = sum(norm.values()) / len(norm)
        out["normalized_per_task"] = norm
        out["drop_std"] = float(drops.std(unbiased=False)) if len(drops) > 1 else 0.0
    return out
