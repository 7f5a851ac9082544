"""The DOTA toolchain: label readers/writers (DOTA labelTxt, DIOR-R, HRSC2016), class lists, the
MMRotate-compatible splitter, patch-detection merging, the devkit-exact task-1 evaluator and the
server submission zip. The CLI (``rsvision dota split|merge|eval|submit``) is a thin layer over it."""
from .dior import read_dior_xml
from .evaluate import evaluate, evaluate_class, evaluate_polys, load_ground_truth, poly_iou, voc_ap
from .hrsc import hrsc_box_to_poly, read_hrsc_xml
from .labels import (
    DIOR_CLASSES,
    DOTA1_0_CLASSES,
    DOTA1_5_CLASSES,
    DOTA2_0_CLASSES,
    HRSC_CLASSES,
    Annotation,
    Detection,
    append_task1,
    class_names,
    polygon_area,
    read_label_txt,
    read_task1,
    read_task1_dir,
    task1_line,
    write_label_txt,
    write_task1,
)
from .merge import merge_detections, merge_task1_dir
from .split import (
    SplitConfig,
    SplitOptionError,
    check_split_config,
    max_pixels_budget,
    parse_patch_name,
    patch_name,
    split_dataset,
    split_image,
    window_objects,
    window_sizes,
)
from .submit import make_submission

__all__ = [
    "DOTA1_0_CLASSES", "DOTA1_5_CLASSES", "DOTA2_0_CLASSES", "DIOR_CLASSES", "HRSC_CLASSES", "class_names",
    "Annotation", "read_label_txt", "write_label_txt", "polygon_area", "read_dior_xml", "read_hrsc_xml",
    "hrsc_box_to_poly", "Detection", "read_task1", "read_task1_dir", "write_task1", "append_task1", "task1_line",
    "SplitConfig", "window_sizes", "window_objects", "split_image", "split_dataset", "patch_name",
    "parse_patch_name", "check_split_config", "max_pixels_budget", "SplitOptionError", "merge_detections",
    "merge_task1_dir", "voc_ap", "poly_iou", "evaluate_class", "evaluate_polys", "evaluate", "load_ground_truth",
    "make_submission",
]
