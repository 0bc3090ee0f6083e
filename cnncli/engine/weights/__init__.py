"""Where a network's weights come from, and loading them so that nothing is silently dropped.

- `files`: reading a state dict (.safetensors, a cnncli run, .pth with weights_only=True);
- `mapping`: the classifier apart from the base, tolerant backbone loading, names from other
  projects (`map_in_order`, `map_same_names`);
- `imagenet`: ImageNet-1k's class names and WordNet IDs;
- `sources`: each place weights come from (a file, a run, timm's cache, a pip weight package,
  timm's download), one small object each;
- `resolve`: `resolve_backbone`, one loop over the sources in order.
"""

from cnncli.engine.weights.files import load_initial_weights, read_state_dict
from cnncli.engine.weights.imagenet import (
    class_names_for,
    imagenet_class_names,
    imagenet_wordnet_ids,
    label_names,
)
from cnncli.engine.weights.mapping import (
    MAPPINGS,
    classes_in_state,
    classifier_names,
    is_classifier_key,
    load_backbone_state,
    map_in_order,
    map_same_names,
)
from cnncli.engine.weights.resolve import Backbone, load_requested_backbone, resolve_backbone
from cnncli.engine.weights.sources import (
    DEFAULT_SOURCES,
    WEIGHT_PACKAGES,
    WeightPackage,
    network_reachable,
    package_state,
    packages_for,
    timm_cached_file,
)

__all__ = [
    "DEFAULT_SOURCES", "MAPPINGS", "WEIGHT_PACKAGES", "Backbone", "WeightPackage", "class_names_for",
    "classes_in_state", "classifier_names", "imagenet_class_names", "imagenet_wordnet_ids", "is_classifier_key",
    "label_names", "load_backbone_state", "load_initial_weights", "load_requested_backbone", "map_in_order",
    "map_same_names", "network_reachable", "package_state", "packages_for", "read_state_dict",
    "resolve_backbone", "timm_cached_file",
]
