"""``IndexedBitMasks``: the GT bitmaps of sampled RoIs, as indices into the image's GT masks.

Detectron2 labels each sampled RoI with its GT's fields by indexing them, so with bitmap mask
targets (``INPUT.MASK_RASTER: mmdet``) every sampled RoI gets its own copy of an image-size
bitmap, and ``BitMasks.crop_and_resize`` converts all of them to float32: for 512 RoIs of an
800x1216 image, 128 positives hold 125 MB of bool and 500 MB of float (the ``recipe``
section of ``benchmarks/run.py``: 1.22x the peak memory of polygon targets). The 28x28
targets need only the GT masks themselves: RoIAlign takes each RoI's batch index, which here
is its GT's row. Same kernel on the same values, so the targets are identical
(``tests/modeling/mmdet_recipe/test_indexed_masks.py``).
"""

from __future__ import annotations

import torch
from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks


class IndexedBitMasks(BitMasks):
    """``BitMasks`` whose row ``i`` is ``source[index[i]]``, without the copy.

    ``tensor`` materialises the rows (for code that needs them); indexing, ``to``, ``len``
    and ``crop_and_resize`` work on the indices.
    """

    def __init__(self, source: torch.Tensor, index: torch.Tensor) -> None:  # noqa: D107
        if source.dim() != 3:
            raise ValueError(f"source masks must be (G, H, W), got shape {tuple(source.shape)}")
        self.source = source
        self.index = index.to(device=source.device, dtype=torch.long)
        self.image_size = tuple(source.shape[1:])

    @property
    def tensor(self) -> torch.Tensor:  # type: ignore[override]
        return self.source[self.index]

    @property
    def device(self) -> torch.device:
        return self.source.device

    def to(self, *args: object, **kwargs: object) -> IndexedBitMasks:
        source = self.source.to(*args, **kwargs)
        return IndexedBitMasks(source, self.index.to(source.device))

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, item: int | slice | torch.Tensor) -> BitMasks:
        if isinstance(item, int):
            return BitMasks(self.source[self.index[item]].unsqueeze(0))
        return IndexedBitMasks(self.source, self.index[item])

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """``BitMasks.crop_and_resize`` (aligned RoIAlign of the bitmap, >= 0.5), reading
        each RoI's GT mask through its index."""
        if len(boxes) != len(self):
            raise ValueError(f"{len(boxes)} boxes for {len(self)} masks")
        device = self.source.device
        rois = torch.cat([self.index.to(dtype=boxes.dtype)[:, None], boxes.to(device)], dim=1)
        masks = self.source.to(dtype=torch.float32)[:, None]
        out = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(masks, rois)
        return out.squeeze(1) >= 0.5


__all__ = ["IndexedBitMasks"]
