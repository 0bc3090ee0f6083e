"""`wds:SPEC`: WebDataset tar shards, read as a torch IterableDataset that each rank and worker splits.

SPEC is one of
- a folder that `cnncli datasets pack` wrote (its `index.json` names the shards of each split,
  the class names and the counts), or that index file itself;
- a shard pattern, local or a `pipe:` command, with braces (`shards/train-{000000..000099}.tar`,
  several joined by `::` as webdataset does): the training split. A `{split}` in it stands for
  train, val and test (the splits whose shards exist);
- `train=PATTERN;val=PATTERN;test=PATTERN` (val and test optional): a pattern per split.
Class names and counts come from an `index.json` beside the shards when it lists them, otherwise
from the tar headers (one pass that reads names and the small `.cls` members, never an image).

A sample is `KEY.jpg|png|jpeg|webp` (the image) and `KEY.cls` (the class number as text), as
`pack` writes and as most WebDataset image sets are laid out.

Two readers:
- `TarSource` (what train, finetune and eval use, through `load_shards`): the shards' tar
  headers give each sample's byte range, so a sample is read at random like a file (the
  streaming interface of data/stream.py: workers, transforms, exact resume, bad files). Its
  epoch order (`shard_order`) shuffles the shards by (seed, epoch), shuffles the samples
  inside each shard, and cuts the result into equal runs per rank: each DDP rank reads its
  own shards, every sample once per epoch. `pipe:` shards are copied once into the cache
  folder for it.
- `ShardDataset`, a torch IterableDataset that reads shards front to back (local or `pipe:`,
  nothing indexed): each epoch the shard list is shuffled with a generator seeded by (seed,
  epoch), dealt to the (rank, worker) slots, and each slot shuffles its samples in a bounded
  buffer seeded by (seed, epoch, slot). Every sample is read exactly once per epoch across all
  ranks and workers; under DDP (world > 1) each rank stops at (or tops up to) an equal share
  so that ranks take the same number of steps. With fewer shards than slots, the slots split
  samples instead. The epoch lives in shared memory so that persistent workers see `set_epoch`.

Modules, each depending only on those above it: `source` (constants, records, URLs, labels),
`headers` (counting from tar headers), `spec` (parsing SPEC), `order` (epoch orders), `reader`
(ShardDataset), `tarsource` (TarSource, load_shards).
"""

from cnncli.data.shards.headers import count_shard
from cnncli.data.shards.order import shard_order
from cnncli.data.shards.reader import ShardDataset, decode_image_bytes, split_dataset
from cnncli.data.shards.source import (
    IMAGE_KEYS,
    INDEX_FORMAT,
    INDEX_NAME,
    MAX_SHARDS,
    SHUFFLE_BUFFER,
    SPLITS,
    ShardSource,
    ShardSplit,
    expand_pattern,
    is_wds,
)
from cnncli.data.shards.spec import open_source, read_index
from cnncli.data.shards.tarsource import TarSource, load_shards, localize

__all__ = [
    "IMAGE_KEYS", "INDEX_FORMAT", "INDEX_NAME", "MAX_SHARDS", "SHUFFLE_BUFFER", "SPLITS",
    "ShardDataset", "ShardSource", "ShardSplit", "TarSource", "count_shard", "decode_image_bytes",
    "expand_pattern", "is_wds", "load_shards", "localize", "open_source", "read_index",
    "shard_order", "split_dataset",
]
