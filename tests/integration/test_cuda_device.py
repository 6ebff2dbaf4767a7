"""The replica's --device cuda:N start-up contract.

Without a CUDA device, `corral-replica ... --device cuda:0` must exit non-zero
at start with exactly one line on stderr naming cuda:0 (in --verify and in
serving mode). The test hides every device with CUDA_VISIBLE_DEVICES="", so
it checks that contract on machines with and without a GPU. An ordinal no
machine has (cuda:99) fails the same way on any machine.

With --gpu, the other half: the bundled digits model must load on cuda:0 and
reproduce its parity vectors (--verify). That is a ctest entry of its own,
skipped (exit 77) where nvidia-smi lists no GPU.

Usage: test_cuda_device.py BUILD_DIR REPO_ROOT [--gpu]
"""
import os
import subprocess
import sys
import unittest

BUILD, ROOT = sys.argv[1], sys.argv[2]
GPU = "--gpu" in sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import cuda_devices  # noqa: E402
import testrun  # noqa: E402

REPLICA = os.path.join(BUILD, "replica", "corral-replica")
REPO = os.path.join(ROOT, "models")


def run_replica(device, *mode, hide_devices=False):
    args = [REPLICA, "--model-repo", REPO, "--model", "digits", "--device", device] + list(mode)
    env = dict(os.environ)
    if hide_devices:
        env["CUDA_VISIBLE_DEVICES"] = ""
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stderr.strip().splitlines(), p.stdout


class CudaDevice(unittest.TestCase):
    def expect_one_line_failure(self, device, hide_devices):
        for mode in (["--verify"], ["--listen", "tcp://127.0.0.1:0"]):
            rc, lines, _ = run_replica(device, *mode, hide_devices=hide_devices)
            self.assertNotEqual(rc, 0, "replica started on %s (%s)" % (device, mode))
            self.assertEqual(len(lines), 1, "expected one line, got %r" % lines)
            self.assertIn(device, lines[0])

    def test_missing_device_fails_at_start(self):
        self.expect_one_line_failure("cuda:0", hide_devices=True)

    def test_out_of_range_ordinal(self):
        self.expect_one_line_failure("cuda:99", hide_devices=False)


class CudaDeviceGpu(unittest.TestCase):
    def test_digits_verifies_on_cuda(self):
        rc, lines, out = run_replica("cuda:0", "--verify")
        self.assertEqual(rc, 0, lines)
        self.assertIn("verified", out)


if __name__ == "__main__":
    if GPU:
        if not cuda_devices():
            testrun.skip_all("no CUDA device: nvidia-smi is missing or lists no GPU")
        testrun.main(unittest.defaultTestLoader.loadTestsFromTestCase(CudaDeviceGpu))
    testrun.main(unittest.defaultTestLoader.loadTestsFromTestCase(CudaDevice))
