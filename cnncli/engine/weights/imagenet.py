"""ImageNet-1k's labels, from timm's bundled metadata (offline): what a pretrained classifier's
1000 outputs mean."""

from __future__ import annotations


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet-1k class descriptions ("tabby, tabby cat", ...), in output order."""
    return _imagenet_table("index_to_description")


def imagenet_wordnet_ids() -> list[str] | None:
    """ImageNet-1k's WordNet IDs (n01440764, ...) in output order: the names of its folders."""
    return _imagenet_table("index_to_label_name")


def _imagenet_table(lookup: str) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [getattr(info, lookup)(i) for i in range(info.num_classes())]
    except Exception:  # an older timm without the bundled files
        return None


def label_names(label_set: str | None, classes: int | None) -> list[str] | None:
    """The full descriptions of a known label set's outputs, when the classifier has its size."""
    if label_set == "imagenet-1k" and classes == 1000:
        return imagenet_class_names()
    return None


def class_names_for(num_classes: int) -> list[str]:
    """Display names: ImageNet-1k's (each description's first synonym) for 1000 classes; else numbers."""
    if num_classes == 1000:
        names = imagenet_class_names()
        if names:
            return [n.split(",")[0].strip() for n in names]
    return [str(i) for i in range(num_classes)]
