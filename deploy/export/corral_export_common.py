"""What every part of the export tool shares: the datatypes corral carries, the
limits the replica enforces, the error the tool reports, and the input specification.

The export tool (export.py) is split by step: the command line (corral_export_args),
building or loading the model and running it in PyTorch (corral_export_model), the
ONNX export (corral_export_onnx), the parity vectors (corral_export_vectors),
config.json (corral_export_config), verification with onnxruntime and corral-replica
(corral_export_verify) and publishing into the repository (corral_export_repo). The
names and numbers here are the ones more than one step depends on, so that a limit
of the replica is written once.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Wire datatype name -> numpy dtype name. Kept to the types PyTorch, onnxruntime
# and the corral wire format all carry.
DTYPES = {
    "FP32": "float32",
    "FP64": "float64",
    "FP16": "float16",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}
# ONNX TensorProto.DataType number -> wire datatype name.
ONNX_ELEM = {1: "FP32", 2: "UINT8", 3: "INT8", 5: "INT16", 6: "INT32", 7: "INT64",
             9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 4: "UINT16"}

DEFAULT_INT_RANGE = (0, 10)
LEGACY_OPSET = 17
# Batch sizes of the parity vectors, in order; more vectors than this draw at random.
VECTOR_BATCHES = [1, 3, 8, 2, 16, 5, 32, 7]
# Range of sizes drawn for a dynamic axis that is not the batch axis.
OTHER_DYN_RANGE = (1, 16)
# The batching section a model with a dynamic batch axis gets unless told otherwise:
# batch what is already waiting, add no delay (docs/benchmarks.md, "Batching by default").
DEFAULT_MAX_BATCH = 16
DEFAULT_QUEUE_DELAY_US = 0
# The replica's limits on these keys (replica/model_repo.c).
MAX_BATCH_LIMIT = 1 << 20
QUEUE_DELAY_LIMIT_US = 60000000
MAX_BUCKETS = 32


class ExportError(Exception):
    """A failure with a message fit to show the user as is."""


def log(msg: str) -> None:
    print(msg, flush=True)


class InputSpec:
    """One --input NAME:DIMS:DTYPE[:MIN:MAX]: -1 in dims marks a dynamic axis, and lo and
    hi (None: the defaults) bound the random values of the parity vectors."""

    def __init__(self, name, dims, dtype, lo=None, hi=None):
        self.name = name
        self.dims = dims
        self.dtype = dtype
        self.lo = lo
        self.hi = hi

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.dims) and self.dims[0] == -1
