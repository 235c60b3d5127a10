"""The embedding cache: frozen embeddings of every training image, computed once.

The encoder is frozen, so re-encoding every step only burns compute. `rcdm embed` stores, for each usable image i
and each view v (0 = as is, 1 = horizontally flipped), the embedding f(view_v(x_i)). Training pairs the image in
view v with exactly that embedding. The file is safetensors; its metadata records the encoder (spec, layer,
dimension, preprocessing, a fingerprint of its weights), the data spec, a dataset fingerprint and the views, and
training refuses a cache that does not match its data or an encoder whose weights changed.

Writing scales to ImageNet (`embed_store`): `OUT.partial` is preallocated at its final size, the processes of an
`accelerate launch` fill disjoint chunks of rows in place, and a per-item status (0 pending, 1 done, 2 unreadable)
is written after each chunk's rows are on disk, so the same command resumes after a kill. While it runs, OUT.lock
refuses a second run writing the same OUT (the kernel drops the lock with its process: a killed run blocks no one).
When every process is done, the main one stores the per-dimension mean/std of the embeddings and the metadata, and
renames the file to OUT.
Rows follow the dataset, except that each unreadable item's row is filled with one of the last readable items
(`indices` says which): the usable rows are then a prefix, mapped without a copy. Reading maps the file.

Layout: `reader` (EmbeddingCache: the finished file, mapped, and its checks), `builder` (build_cache: writing it,
sharded and resumable). `rcdm embed` is rcdm.cli.embed.
"""
from .builder import EmbedOptions, build_cache, embed_dataset, streamed_stats
from .reader import DONE, PENDING, UNREADABLE, VIEWS, EmbeddingCache, apply_view

__all__ = ["DONE", "PENDING", "UNREADABLE", "VIEWS", "EmbedOptions", "EmbeddingCache", "apply_view", "build_cache",
           "embed_dataset", "streamed_stats"]
