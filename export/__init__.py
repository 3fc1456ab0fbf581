"""cifar-edge export: Keras → ONNX with measured parity, plus INT8 and FP16 edge variants.

    from export import export_model, ExportConfig
    result = export_model("runs/tiny/model.keras", ExportConfig(int8=True, fp16=True),
                          data="../shared/data/cifar10")
    print(result.report.table())  # result.passed: every threshold met

    # a model from a notebook that trained on x / 255 (pixels scaled outside the model):
    export_model("notebook/model.h5", ExportConfig(preprocessing=Preprocessing("0-1")), data="../shared/data/cifar10")

Heavy imports (TensorFlow, tf2onnx, onnx) happen inside the functions that need them.
"""

from .metadata import read_metadata
from .parity import DEFAULT_THRESHOLDS, ParityEntry, ParityFailed, ParityReport, Thresholds, raise_if_failed
from .pipeline import ExportConfig, ExportResult, check_parity, export_model
from .preprocessing import Preprocessing, PreprocessingMismatch
from .quantize import Int8Config

__all__ = ["export_model", "check_parity", "raise_if_failed", "read_metadata", "ExportConfig", "ExportResult",
           "Int8Config", "ParityEntry", "ParityFailed", "ParityReport", "Preprocessing", "PreprocessingMismatch",
           "Thresholds", "DEFAULT_THRESHOLDS"]
