"""CrypTen 0.4.1 on torch 2.13: the two adjustments it needs, kept here (never in the library).

1. crypten's ONNX converter imports ``torch.onnx._internal.registration``, which torch 2.13
   moved to ``torch.onnx._internal.torchscript_exporter.registration``: alias the old name in
   ``sys.modules`` before crypten is imported.
2. ``crypten.nn.from_pytorch`` traces the model with ``torch.onnx.export``, whose default in
   torch 2.13 is the dynamo exporter; crypten's graph conversion and custom symbolics need
   the TorchScript exporter, so its export call is wrapped to pass ``dynamo=False``.

Use ``import_crypten()`` instead of ``import crypten``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings


def import_crypten():
    """Imports crypten with the torch 2.13 adjustments; raises ImportError where it is absent."""
    try:
        if importlib.util.find_spec("crypten") is None:
            raise ImportError("No module named 'crypten'")
    except ValueError as error:  # sys.modules["crypten"] is None: imports of it are blocked
        raise ImportError(str(error)) from None
    if "torch.onnx._internal.registration" not in sys.modules:
        try:
            moved = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")
        except ImportError:
            moved = None  # an older torch: the original module is where crypten looks
        if moved is not None:
            sys.modules["torch.onnx._internal.registration"] = moved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # crypten's import-time deprecation noise (torch, onnx APIs)
        crypten = importlib.import_module("crypten")
        converter = importlib.import_module("crypten.nn.onnx_converter")
    _use_torchscript_exporter(converter)
    return crypten


def _use_torchscript_exporter(converter) -> None:
    import torch

    if getattr(converter, "_compare_patched", False):
        return

    def export(f, pytorch_model, dummy_input):
        # crypten's own _export_pytorch_model, plus dynamo=False (the TorchScript exporter)
        kwargs = {"do_constant_folding": False, "export_params": True, "input_names": ["input"],
                  "operator_export_type": torch.onnx.OperatorExportTypes.ONNX, "output_names": ["output"],
                  "opset_version": converter._OPSET_VERSION, "dynamo": False}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
            torch.onnx.export(pytorch_model, dummy_input, f, **kwargs)
        return f

    converter._export_pytorch_model = export
    converter._compare_patched = True
