"""Image sources: packed-JPEG npz files, ImageFolder directories, WebDataset tar shards and torchvision datasets,
given by path.

Every source is map-style and yields (uint8 tensor (3, H, W), label). Unreadable images are reported, never silently
replaced.

Layout: `decode` (one image -> RGB, ImageError), `sources` (npz, folders, torchvision, `open_dataset`, listings,
fingerprints, readers of whole sets), `webdataset` (tar shards, indexed for item-on-demand reads).
"""
from ..images import pil_to_uint8, resize_center_crop  # noqa: F401 (re-exported, as before the split)
from .decode import MAX_SIDE, ImageError, open_image, to_rgb
from .sources import (FolderImages, NpzImages, TorchvisionImages, check_bad, decode_all, fingerprint, listing_of,
                      open_dataset, readable_items)
from .webdataset import TarShardImages, expand_shards, index_shard

__all__ = ["MAX_SIDE", "FolderImages", "ImageError", "NpzImages", "TarShardImages", "TorchvisionImages", "check_bad",
           "decode_all", "expand_shards", "fingerprint", "index_shard", "listing_of", "open_dataset", "open_image",
           "readable_items", "to_rgb"]
