"""cifar-edge export: Keras → ONNX with measured parity, plus INT8 and FP16 edge variants.

    from export import export_model, ExportConfig
    result = export_model("runs/tiny/model.keras", ExportConfig(int8=True, fp16=True),
                          data="../shared/data/cifar10")
    print(result.report.table())

Heavy imports (TensorFlow, tf2onnx, onnx) happen inside the functions that need them.
"""

from .metadata import read_metadata
from .parity import DEFAULT_THRESHOLDS, ParityEntry, ParityReport, Thresholds
from .pipeline import ExportConfig, ExportResult, check_parity, export_model
from .quantize import Int8Config

__all__ = ["export_model", "check_parity", "read_metadata", "ExportConfig", "ExportResult", "Int8Config",
           "ParityEntry", "ParityReport", "Thresholds", "DEFAULT_THRESHOLDS"]
