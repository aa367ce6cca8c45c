"""Data sets for training: synthetic glass-container sets from the rig, and a COCO/MMIOC reader.

No torch at module level (the reader and generator are plain numpy/OpenCV); training wraps them.
"""

from training.data.coco import CocoSplit, DatasetError, ImageRecord, load_coco_split

__all__ = ["CocoSplit", "DatasetError", "ImageRecord", "load_coco_split"]
