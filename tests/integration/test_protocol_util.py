"""Helpers shared by the router's protocol, tritonclient, metrics and client tests.

make_repo(dir, root) builds a model repository in `dir` with:
  digits  - the bundled model (copied), FP32 [-1, 64] -> [-1, 10], labels 0-9
  slow    - digits again, with a batcher queue of one request (for 429)
  dtypes  - Identity over one input per OIP numeric datatype, [-1, 3] each:
            input  x_<type> -> output y_<type>
start_cluster(build, repo, ...) starts replicas and a router whose RPC
endpoint is on an ephemeral port, and returns the Cluster with .rpc_url set.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster  # noqa: E402

# OIP datatype -> (numpy dtype, ONNX element type)
DTYPES = {
    "BOOL": (np.bool_, TensorProto.BOOL),
    "UINT8": (np.uint8, TensorProto.UINT8),
    "UINT16": (np.uint16, TensorProto.UINT16),
    "UINT32": (np.uint32, TensorProto.UINT32),
    "UINT64": (np.uint64, TensorProto.UINT64),
    "INT8": (np.int8, TensorProto.INT8),
    "INT16": (np.int16, TensorProto.INT16),
    "INT32": (np.int32, TensorProto.INT32),
    "INT64": (np.int64, TensorProto.INT64),
    "FP16": (np.float16, TensorProto.FLOAT16),
    "FP32": (np.float32, TensorProto.FLOAT),
    "FP64": (np.float64, TensorProto.DOUBLE),
}


def sample(dt, rows=2, json_safe=False):
    """Values that exercise each type's range edges, shape [rows, 3].

    json_safe: UINT64 stays below 2**63, as JSON parsers (jansson's too) read
    integers as int64; larger UINT64 values travel as binary data."""
    npdt = DTYPES[dt][0]
    if dt == "BOOL":
        flat = [True, False, True, False, False, True]
    elif dt.startswith("FP"):
        flat = [0.5, -1.25, 3.0, 1e-3, -0.0, 42.0]
    else:
        info = np.iinfo(npdt)
        hi = 2**63 - 1 if json_safe and dt == "UINT64" else int(info.max)
        flat = [int(info.min), hi, 0, 1, hi // 3, 7]
    return np.array(flat[: rows * 3] * (1 + rows // 2), dtype=npdt)[: rows * 3].reshape(rows, 3)


def _write_vectors(vdir, inputs, outputs):
    os.makedirs(vdir, exist_ok=True)
    for i, (name, arr) in enumerate(inputs):
        with open(os.path.join(vdir, "input_%d.pb" % i), "wb") as f:
            f.write(numpy_helper.from_array(arr, name).SerializeToString())
    for j, (name, arr) in enumerate(outputs):
        with open(os.path.join(vdir, "output_%d.pb" % j), "wb") as f:
            f.write(numpy_helper.from_array(arr, name).SerializeToString())


def _dtypes_model(mdir):
    nodes, ins, outs, cfg_in, cfg_out, vin, vout = [], [], [], [], [], [], []
    for dt, (npdt, ot) in DTYPES.items():
        x, y = "x_" + dt.lower(), "y_" + dt.lower()
        nodes.append(helper.make_node("Identity", [x], [y]))
        ins.append(helper.make_tensor_value_info(x, ot, ["N", 3]))
        outs.append(helper.make_tensor_value_info(y, ot, ["N", 3]))
        cfg_in.append({"name": x, "datatype": dt, "shape": [-1, 3]})
        cfg_out.append({"name": y, "datatype": dt, "shape": [-1, 3]})
        vin.append((x, sample(dt)))
        vout.append((y, sample(dt)))
    graph = helper.make_graph(nodes, "dtypes", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.join(mdir, "1"), exist_ok=True)
    onnx.save(model, os.path.join(mdir, "1", "model.onnx"))
    _write_vectors(os.path.join(mdir, "1", "vectors", "0"), vin, vout)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump({"name": "dtypes", "platform": "onnx", "inputs": cfg_in, "outputs": cfg_out,
                   "parity": {"atol": 0, "rtol": 0}}, f)


def make_repo(dest, root):
    shutil.copytree(os.path.join(root, "models", "digits"), os.path.join(dest, "digits"))
    slow = os.path.join(dest, "slow")
    shutil.copytree(os.path.join(root, "models", "digits"), slow)
    with open(os.path.join(slow, "config.json")) as f:
        cfg = json.load(f)
    cfg["name"] = "slow"
    cfg["batching"] = {"max_batch_size": 0, "max_queue_size": 1}
    with open(os.path.join(slow, "config.json"), "w") as f:
        json.dump(cfg, f)
    _dtypes_model(os.path.join(dest, "dtypes"))


def start_cluster(build, repo, replicas, router_args=(), ready=None):
    """replicas: [(model, [extra args])]; ready: models to wait for (default: all).

    Returns the Cluster with the router started and those models ready."""
    c = Cluster(build, repo)
    try:
        for model, extra in replicas:
            c.replica(model, *extra)
        c.router("--rpc-listen", "tcp://127.0.0.1:0", *router_args)
        m = re.search(r"RPC listening on (tcp://127\.0\.0\.1:\d+)", c.router_proc.output())
        c.rpc_url = m.group(1) if m else None
        if ready is None:
            c.wait_ready()
        for model in ready or ():
            c.wait_ready("/v2/models/%s/ready" % model)
    except Exception:
        c.close()
        raise
    return c


def stop_and_clean(cluster, tmp):
    """A tearDownClass in one call: stop_and_check(cluster), then tmp (a
    TemporaryDirectory) removed whatever happened."""
    try:
        stop_and_check(cluster)
    finally:
        tmp.cleanup()


def stop_and_check(cluster):
    """Stops the cluster; raises when the router did not exit cleanly (status 0,
    no sanitizer report: a sanitizer build also checks for leaks at exit)."""
    proc = cluster.router_proc
    cluster.close()
    if proc is None:
        return
    out = proc.output()
    bad = [w for w in ("Sanitizer", "runtime error:", "LeakSanitizer") if w in out]
    if proc.p.returncode != 0 or bad:
        tail = "\n".join(out.splitlines()[-40:])
        raise AssertionError("router exit status %s, %s:\n%s" % (proc.p.returncode, bad, tail))
