"""Which output of a pretrained network a dataset's class is: names, WordNet IDs or indices.

`cnncli eval NAME --pretrained --data DIR` scores an ImageNet network as is, on a dataset
whose classes are a subset of ImageNet's. Folder names are matched the way people write
them: any synonym of the class description ("tabby", "tabby cat", "tabby_cat"; case,
spaces, underscores and hyphens do not matter), the class's WordNet ID ("n02123045", the
layout of ImageNet's own validation folders), or, when every class is a number, its index
(the layout of ImageNetV2). A name that fits several classes (ImageNet has two "crane"s)
is an error that lists the candidates' WordNet IDs, rather than a silent pick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cnncli.errors import InputError


@dataclass
class ClassMatch:
    """dataset class index -> network output index, for the classes that matched."""

    network_index: dict[int, int]
    left_out: list[str] = field(default_factory=list)  # dataset classes the network does not have
    by: str = "name"  # "name", "wordnet id" or "index"


def normalize(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def match_classes(dataset_names: list[str], network_names: list[str],
                  network_ids: list[str] | None = None) -> ClassMatch:
    """Map each dataset class onto one output of the network.

    `network_names` are the network's class descriptions, synonyms separated by commas
    (timm's ImageNet table: "tabby, tabby cat"); `network_ids` their WordNet IDs, if known.
    Raises InputError when no class matches or when a name is ambiguous.
    """
    n_out = len(network_names)
    if dataset_names and all(re.fullmatch(r"\d+", n.strip()) for n in dataset_names):
        mapping = {i: int(n) for i, n in enumerate(dataset_names) if int(n) < n_out}
        left = [n for n in dataset_names if int(n) >= n_out]
        return _checked(ClassMatch(mapping, left, "index"), dataset_names, n_out)

    ids = {normalize(w): i for i, w in enumerate(network_ids or [])}
    primary: dict[str, list[int]] = {}
    synonym: dict[str, list[int]] = {}
    for i, description in enumerate(network_names):
        words = [normalize(w) for w in description.split(",") if w.strip()]
        for j, w in enumerate(words):
            if j == 0:
                primary.setdefault(w, []).append(i)
            if i not in synonym.setdefault(w, []):
                synonym[w].append(i)

    mapping: dict[int, int] = {}
    left: list[str] = []
    by_id = by_name = 0
    for d, name in enumerate(dataset_names):
        key = normalize(name)
        if key in ids:
            mapping[d] = ids[key]
            by_id += 1
            continue
        # a class's own (first) name wins over another class's synonym
        candidates = primary.get(key) if len(primary.get(key, [])) == 1 else synonym.get(key, [])
        if not candidates:
            left.append(name)
        elif len(candidates) == 1:
            mapping[d] = candidates[0]
            by_name += 1
        else:
            options = ", ".join(
                f"{c} '{network_names[c].split(',')[0].strip()}'"
                + (f" ({network_ids[c]})" if network_ids else "") for c in candidates)
            hint = "its WordNet ID" if network_ids else "its index"
            raise InputError(f"class '{name}' matches {len(candidates)} of the network's classes: {options}; "
                             f"name its folder by {hint} instead")
    by = "wordnet id" if by_id and not by_name else "name" if not by_id else "name and wordnet id"
    return _checked(ClassMatch(mapping, left, by), dataset_names, n_out)


def _checked(match: ClassMatch, dataset_names: list[str], n_out: int) -> ClassMatch:
    if not match.network_index:
        shown = ", ".join(f"'{n}'" for n in dataset_names[:4]) + (", ..." if len(dataset_names) > 4 else "")
        raise InputError(f"none of the dataset's classes ({shown}) is one of the network's {n_out} classes; "
                         "name the class folders by the network's class names (e.g. 'tabby cat'), WordNet IDs "
                         "(n02123045) or indices")
    return match
