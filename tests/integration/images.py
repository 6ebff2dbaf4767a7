"""Image helpers of the image tests (test_classify.py, test_hostile_requests.py, and
tests/soak.py)."""
import io
import json
import os
import struct
import zlib

import numpy as np


def encode(im, fmt, **kw):
    """A PIL image encoded in memory (fmt: "JPEG", "PNG", "WEBP", ...)."""
    f = io.BytesIO()
    im.save(f, fmt, **kw)
    return f.getvalue()


def png_chunk(kind, data):
    """One PNG chunk: length, type, data and CRC, for hand-built (hostile) PNG files."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_image_model(mdir, classes=10, seed=3):
    """A small image model built with the onnx package (no torch, so it is quick): FP32
    [N, 3, 224, 224] -> logits [N, classes], the mean of each channel times a 3 x classes
    matrix plus a bias, preprocessed as ImageNet images, with one parity vector. Returns
    (w, b) for a reference computation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.RandomState(seed)
    w = rng.randn(3, classes).astype(np.float32)
    b = rng.randn(classes).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "img",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.join(mdir, "1", "vectors", "0"))
    onnx.save(model, os.path.join(mdir, "1", "model.onnx"))
    x = rng.rand(1, 3, 224, 224).astype(np.float32)
    y = (x.astype(np.float64).mean(axis=(2, 3)) @ w + b).astype(np.float32)
    vdir = os.path.join(mdir, "1", "vectors", "0")
    with open(os.path.join(vdir, "input_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(x, "input").SerializeToString())
    with open(os.path.join(vdir, "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(y, "logits").SerializeToString())
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump({"name": "img", "platform": "onnx",
                   "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
                   "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}],
                   "parity": {"atol": 1e-4, "rtol": 1e-4},
                   "preprocess": {"input": "input", "resize": 256, "crop": [224, 224],
                                  "divisor": 255, "mean": [0.485, 0.456, 0.406],
                                  "std": [0.229, 0.224, 0.225], "channels": "RGB",
                                  "layout": "NCHW"},
                   "postprocess": {"output": "logits", "kind": "softmax"}}, f)
    return w, b
