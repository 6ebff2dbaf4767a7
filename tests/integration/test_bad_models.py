"""Bad model files make the replica exit non-zero with one line naming the
problem: truncated ONNX, an unsupported op, a missing initializer, parity
vectors that do not match, and a config that disagrees with the graph; and
hostile ones: not protobuf at all, dimensions whose product overflows, raw_data
of the wrong length, a graph with a cycle, an initializer declared at 100 GB,
external data (escaping the model directory or not), and batching buckets that
would need more memory than the machine has.

Usage: test_bad_models.py BUILD_DIR REPO_ROOT
"""
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import sanitizer_build  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
REPLICA = os.path.join(BUILD, "replica", "corral-replica")


def machine_memory():
    """The memory the replica counts as the machine's: physical memory, or a lower
    cgroup limit (v2 memory.max, v1 memory.limit_in_bytes)."""
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            mem = min(mem, int(text))
    return mem


class BadModels(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="corral-badmodel-")
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(self.tmp, "digits"))
        self.model_path = os.path.join(self.tmp, "digits", "1", "model.onnx")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def run_replica(self, *mode, env=None):
        args = [REPLICA, "--model-repo", self.tmp, "--model", "digits"] + list(mode)
        p = subprocess.run(args, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **(env or {})))
        return p.returncode, p.stderr.strip().splitlines(), p.stdout

    def expect_failure(self, *words):
        for mode in (["--verify"], ["--listen", "tcp://127.0.0.1:0"]):
            rc, lines, _ = self.run_replica(*mode)
            self.assertNotEqual(rc, 0, "replica %s accepted a bad model" % mode)
            self.assertEqual(len(lines), 1, "expected one line, got %r" % lines)
            for w in words:
                self.assertIn(w.lower(), lines[0].lower(), lines[0])

    def edit_model(self, fn):
        m = onnx.load(self.model_path, load_external_data=False)
        fn(m)
        onnx.save(m, self.model_path)

    def test_good_model_verifies(self):
        rc, lines, out = self.run_replica("--verify")
        self.assertEqual(rc, 0, lines)
        self.assertIn("max abs diff", out)
        self.assertIn("logits", out)

    def test_truncated_onnx(self):
        with open(self.model_path, "rb") as f:
            data = f.read()
        with open(self.model_path, "wb") as f:
            f.write(data[: len(data) // 2])
        self.expect_failure("model.onnx")

    def test_unsupported_op(self):
        def fn(m):
            m.graph.node[-1].op_type = "FancyNewOp"
        self.edit_model(fn)
        self.expect_failure("FancyNewOp")

    def test_missing_initializer(self):
        removed = []

        def fn(m):
            init = m.graph.initializer[0]
            removed.append(init.name)
            m.graph.initializer.remove(init)
        self.edit_model(fn)
        self.expect_failure(removed[0])

    def test_parity_mismatch(self):
        path = os.path.join(self.tmp, "digits", "1", "vectors", "0", "output_0.pb")
        t = onnx.TensorProto()
        with open(path, "rb") as f:
            t.ParseFromString(f.read())
        arr = numpy_helper.to_array(t).copy()
        arr.flat[0] += 0.5
        with open(path, "wb") as f:
            f.write(numpy_helper.from_array(arr, t.name).SerializeToString())
        self.expect_failure("parity", "logits")

    def test_config_disagrees_with_graph(self):
        cfg_path = os.path.join(self.tmp, "digits", "config.json")
        with open(cfg_path) as f:
            text = f.read()
        with open(cfg_path, "w") as f:
            f.write(text.replace('"input"', '"pixels"'))
        self.expect_failure("config.json", "pixels")

    def test_cuda_without_device(self):
        # Devices are hidden, so this holds on a machine with a GPU too.
        rc, lines, _ = self.run_replica("--listen", "tcp://127.0.0.1:0", "--device", "cuda:0",
                                        env={"CUDA_VISIBLE_DEVICES": ""})
        self.assertNotEqual(rc, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cuda:0", lines[0])


    # ---- hostile files: each refused before anything outside the model directory is read ----

    def write_raw(self, data):
        with open(self.model_path, "wb") as f:
            f.write(data)

    def test_not_protobuf_random_bytes(self):
        self.write_raw(np.random.default_rng(17).bytes(4096))
        self.expect_failure("model.onnx", "not a valid ONNX model")

    def test_not_protobuf_json(self):
        self.write_raw(b'{"graph": {"node": [{"op_type": "Relu"}]}, "opset_import": 17}\n')
        self.expect_failure("model.onnx", "not a valid ONNX model")

    def test_dims_overflow_int64(self):
        # 2^40 * 2^40 elements: the product does not fit in an int64.
        def fn(m):
            w = m.graph.initializer[0]
            del w.dims[:]
            w.dims.extend([1 << 40, 1 << 40])
        self.edit_model(fn)
        self.expect_failure("fc1.weight", "overflow")

    def test_raw_data_length_mismatch(self):
        def fn(m):
            w = m.graph.initializer[0]
            w.raw_data = w.raw_data[:-4]
        self.edit_model(fn)
        self.expect_failure("fc1.weight", "16380 bytes of raw_data", "expected 16384")

    def test_graph_with_cycle(self):
        # Relu reads an Add of the final logits, which the Relu itself feeds:
        # Relu -> Gemm -> logits -> Add -> Relu.
        def fn(m):
            g = m.graph
            g.node[1].input[0] = "/loop"
            g.node.append(onnx.helper.make_node("Add", ["/fc1/Gemm_output_0", "logits"],
                                                ["/loop"], name="loop_add"))
        self.edit_model(fn)
        self.expect_failure("cycle", "loop_add")

    def test_node_reading_its_own_output(self):
        def fn(m):
            m.graph.node[1].input[0] = m.graph.node[1].output[0]
        self.edit_model(fn)
        self.expect_failure("cycle", "/Relu_output_0")

    def test_initializer_of_100gb_declared_tiny_raw_data(self):
        # 25e9 floats declared (100 GB), 4 bytes stored: refused from the declaration,
        # past the engine's limit on one tensor, never allocated.
        def fn(m):
            w = m.graph.initializer[0]
            del w.dims[:]
            w.dims.extend([25_000_000_000])
            w.raw_data = b"\0\0\0\0"
        self.edit_model(fn)
        t0 = time.monotonic()
        self.expect_failure("fc1.weight", "25000000000 elements", "4294967296 byte limit")
        self.assertLess(time.monotonic() - t0, 20)  # both modes; each takes well under a second

    def test_initializer_of_100gb_declared_typed_data(self):
        def fn(m):
            w = m.graph.initializer[0]
            del w.dims[:]
            w.dims.extend([25_000_000_000])
            w.ClearField("raw_data")
            w.float_data.extend([1.0, 2.0])
        self.edit_model(fn)
        self.expect_failure("fc1.weight", "25000000000 elements", "4294967296 byte limit")

    def set_external(self, m, location, dims=None):
        w = m.graph.initializer[0]
        if dims is not None:
            del w.dims[:]
            w.dims.extend(dims)
        w.ClearField("raw_data")
        del w.external_data[:]
        w.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "16384")):
            e = w.external_data.add()
            e.key, e.value = k, v

    def test_external_data_escaping_model_dir(self):
        # The escaping path is a FIFO: opening it to read would block until a writer
        # came, so the replica answering at all shows it never opened the file.
        secret = os.path.join(self.tmp, "secret.bin")
        os.mkfifo(secret)
        self.edit_model(lambda m: self.set_external(m, "../../secret.bin"))
        self.expect_failure("fc1.weight", "external", "../../secret.bin", "escapes")
        for path in ("/etc/passwd", "/proc/self/mem"):
            self.edit_model(lambda m: self.set_external(m, path))
            self.expect_failure("fc1.weight", "external", path, "escapes")

    def test_external_data_100gb_declared(self):
        # A small weights file inside the model directory, declared as 100 GB.
        with open(os.path.join(os.path.dirname(self.model_path), "weights.bin"), "wb") as f:
            f.write(b"\0" * 16384)
        self.edit_model(lambda m: self.set_external(m, "weights.bin", [25_000_000_000]))
        self.expect_failure("fc1.weight", "external", "weights.bin")

    def write_wide_model(self, n_inputs, max_batch, width):
        """A model "wide" of n_inputs [-1, -1] FP32 inputs summed into one output, with
        batching buckets up to max_batch rows and width columns."""
        names = ["x%d" % i for i in range(n_inputs)]
        h = onnx.helper
        dims = ["batch", "width"]
        g = h.make_graph([h.make_node("Sum", names, ["y"])], "wide",
                         [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, dims) for n in names],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        os.makedirs(os.path.join(self.tmp, "wide", "1"))
        onnx.save(m, os.path.join(self.tmp, "wide", "1", "model.onnx"))
        cfg = {
            "name": "wide", "platform": "onnx",
            "inputs": [{"name": n, "datatype": "FP32", "shape": [-1, -1]} for n in names],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
            "batching": {
                "max_batch_size": max_batch, "batch_buckets": [max_batch],
                "inputs": {n: {"dims": {"1": [width]}} for n in names},
                "outputs": {"y": {"dims": {"1": {"input": "x0", "dim": 1}}}},
            },
        }
        with open(os.path.join(self.tmp, "wide", "config.json"), "w") as f:
            json.dump(cfg, f)

    def run_wide(self, limit_bytes):
        # The address-space limit keeps a replica that failed to refuse from taking the
        # machine's memory: it would then fail an allocation, with another message.
        # A sanitizer build reserves terabytes of shadow address space at start, which such
        # a limit forbids: there the refusal is checked without it.
        def cap():
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        sanitized = sanitizer_build(REPLICA)
        results = []
        for mode in (["--verify"], ["--listen", "tcp://127.0.0.1:0"]):
            p = subprocess.run([REPLICA, "--model-repo", self.tmp, "--model", "wide"] + mode,
                               capture_output=True, text=True, timeout=60,
                               preexec_fn=None if sanitized else cap)
            results.append((p.returncode, p.stderr.strip().splitlines()))
        return results

    def test_config_buckets_beyond_memory(self):
        mem = machine_memory()
        rows, width = 1000, 1 << 20          # 4e9 bytes per input, under the 4 GiB tensor limit
        per = rows * width * 4
        n = mem * 3 // (2 * per) + 1         # inputs, so the bucket needs 1.5x the machine
        self.assertLessEqual(n, 63, "the machine has too much memory for this test's model")
        self.write_wide_model(n, rows, width)
        need = (n + 1) * per                 # n inputs and the output, one bucket
        for rc, lines in self.run_wide(mem):
            self.assertNotEqual(rc, 0)
            self.assertEqual(len(lines), 1, lines)
            for w in ("config.json", "memory", str(need), str(mem)):
                self.assertIn(w, lines[0])

    def test_config_bucket_beyond_tensor_limit(self):
        # One input of 2^20 rows by 2^30 columns: 4 PiB in a single tensor.
        self.write_wide_model(1, 1 << 20, 1 << 30)
        for rc, lines in self.run_wide(machine_memory()):
            self.assertNotEqual(rc, 0)
            self.assertEqual(len(lines), 1, lines)
            for w in ("config.json", "x0", str((1 << 50) * 4), "limit"):
                self.assertIn(w, lines[0])


if __name__ == "__main__":
    testrun.main()
