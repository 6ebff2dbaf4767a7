"""Images in, labels out, through a real router and replica.

A small CNN (its logits read every region of the 224x224 input) is exported with
--preprocess imagenet and --labels, served by one replica behind a router, and sent
JPEG, PNG and WebP images of several sizes and aspect ratios, as multipart forms and as
raw bodies, on /v2/models/tiny/classify and /predict. Each answer is compared with
torchvision's pipeline on the same file (PIL decode, Resize(256) with Pillow's
antialiased bilinear filter, CenterCrop(224), ToTensor, Normalize) plus the PyTorch
model in eval mode: the same top-k labels in the same order, probabilities within 1e-3.
The preprocessed tensor itself is compared value by value (image_prep_tool runs the
replica's decode and preprocessing code). Hostile uploads get 415, 413 or 400 with a
message, and the cluster keeps serving; concurrent image requests share batches.

Usage: test_classify.py BUILD_DIR REPO_ROOT
"""
import concurrent.futures
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import uuid
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testrun  # noqa: E402
from cluster import Cluster  # noqa: E402
from test_protocol_util import stop_and_clean  # noqa: E402
from images import encode, png_chunk  # noqa: E402

BUILD, ROOT = sys.argv[1], sys.argv[2]
EXPORT = os.path.join(ROOT, "deploy", "export", "export.py")
SEED = 7
CLASSES = 10
MAX_PIXELS = 4000000
MAX_BYTES = 2000000

try:
    import torch
    from PIL import Image
    from torchvision import transforms
except ImportError as ex:  # pragma: no cover - the tooling venv has them
    testrun.skip_all("torch, torchvision and Pillow are needed: %s" % ex)

BUILDER = '''
import torch
import torch.nn as nn


class TinyClassifier(nn.Module):
    """Conv, ReLU, 4x4 average pooling and a linear layer over all of the 28x28 map:
    every output reads every region of the image."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(4 * 28 * 28, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1)) * 8.0


def build(classes=10):
    return TinyClassifier(classes)
'''


def multipart(field, filename, data, ctype="image/jpeg", extra=()):
    """A multipart/form-data body as browsers and requests' files= send it."""
    b = "----corral%s" % uuid.uuid4().hex
    parts = []
    for name, value in extra:
        parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                      % (b, name, value)).encode())
    parts.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                  "Content-Type: %s\r\n\r\n" % (b, field, filename, ctype)).encode() + data + b"\r\n")
    body = b"".join(parts) + ("--%s--\r\n" % b).encode()
    return body, "multipart/form-data; boundary=%s" % b


def synthetic(w, h, seed):
    """An RGB image with gradients, stripes and noise, so every region differs."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255.0 / w, y * 255.0 / h, ((x // 7 + y // 5) % 9) * 28.0], -1)
    a += rng.randint(0, 48, (h, w, 3))
    a[h // 3:h // 2, w // 4:w // 2] = rng.randint(0, 255, 3)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


class Classify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="corral-classify-")
        work = cls.tmp.name
        with open(os.path.join(work, "tinyimg.py"), "w") as f:
            f.write(BUILDER)
        with open(os.path.join(work, "labels.txt"), "w") as f:
            f.write("".join("class %d\n" % i for i in range(CLASSES)))
        cls.repo = os.path.join(work, "repo")
        # A queue delay, so that concurrent image requests wait for each other and batch.
        res = subprocess.run(
            [sys.executable, EXPORT, "--builder", "tinyimg:build", "--seed", str(SEED),
             "--input", "input:-1x3x224x224:FP32", "--output", "logits", "--repo", cls.repo,
             "--name", "tiny", "--labels", "labels.txt", "--preprocess", "imagenet",
             "--queue-delay-us", "20000", "--replica",
             os.path.join(BUILD, "replica", "corral-replica")],
            cwd=work, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        if res.returncode != 0:
            raise RuntimeError("export failed:\n" + res.stdout)
        shutil.copytree(os.path.join(ROOT, "models", "digits"), os.path.join(cls.repo, "digits"))
        sys.path.insert(0, work)
        import tinyimg
        torch.manual_seed(SEED)
        cls.model = tinyimg.build(CLASSES).eval()
        cls.tf = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        cls.images = cls.make_images()
        c = cls.c = Cluster(BUILD, cls.repo)
        try:
            c.replica("tiny", "--max-image-pixels", str(MAX_PIXELS), "--image-threads", "2")
            c.replica("digits")
            c.router("--max-image-bytes", str(MAX_BYTES), "--health-interval-ms", "2000")
            c.wait_ready("/v2/models/tiny/ready")
        except Exception:
            c.close()
            cls.tmp.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        stop_and_clean(cls.c, cls.tmp)

    @classmethod
    def make_images(cls):
        """name -> encoded bytes: sizes above, at and below 256, portrait and landscape."""
        out = {}
        sizes = [(640, 480), (300, 500), (224, 224), (97, 61), (333, 257), (1200, 400), (256, 999)]
        for i, (w, h) in enumerate(sizes):
            im = synthetic(w, h, i)
            out["%dx%d.jpg" % (w, h)] = encode(im, "JPEG", quality=90)
            out["%dx%d.png" % (w, h)] = encode(im, "PNG")
        im = synthetic(400, 300, 40)
        out["progressive.jpg"] = encode(im, "JPEG", quality=85, progressive=True)
        out["gray.jpg"] = encode(im.convert("L"), "JPEG", quality=90)
        out["gray.png"] = encode(im.convert("L"), "PNG")
        out["rgba.png"] = encode(im.convert("RGBA"), "PNG")
        out["palette.png"] = encode(im.convert("P", palette=Image.ADAPTIVE), "PNG")
        out["optimized.png"] = encode(im, "PNG", optimize=True)
        out["lossless.webp"] = encode(im, "WEBP", lossless=True)
        out["lossy.webp"] = encode(im, "WEBP", quality=80)
        return out

    def reference(self, data):
        x = self.tf(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            return torch.softmax(self.model(x), 1)[0].numpy(), x[0].numpy()

    def classify(self, data, path="/v2/models/tiny/classify?top_k=5", form=True,
                 ctype="image/jpeg"):
        if form:
            body, ct = multipart("file", "upload", data, ctype)
        else:
            body, ct = data, ctype
        st, r = self.c.http("POST", path, body=body, headers={"Content-Type": ct})
        return st, r

    def check_answer(self, name, r, k):
        probs, _ = self.reference(self.images[name])
        want = np.argsort(-probs, kind="stable")[:k]
        got = r["predictions"]
        self.assertEqual(len(got), k, r)
        self.assertEqual(r["model_name"], "tiny")
        self.assertEqual(r["model_version"], "1")
        self.assertEqual([p["index"] for p in got], [int(i) for i in want],
                         "%s: top-%d differs: %s vs %s" % (name, k, got, probs[want]))
        for p in got:
            self.assertEqual(p["label"], "class %d" % p["index"])
            self.assertAlmostEqual(p["prob"], float(probs[p["index"]]), delta=1e-3, msg=name)
        # Sorted by probability, highest first.
        self.assertEqual([p["prob"] for p in got], sorted([p["prob"] for p in got], reverse=True))

    def test_matches_torchvision(self):
        """Every image, as a form and as a raw body, on both endpoints."""
        mime = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
        for i, (name, data) in enumerate(sorted(self.images.items())):
            ext = name.rsplit(".", 1)[1]
            form = i % 2 == 0
            path = ("/v2/models/tiny/classify?top_k=5" if i % 3 else "/predict?model=tiny&top_k=5")
            with self.subTest(image=name, form=form, path=path):
                st, r = self.classify(data, path, form=form, ctype=mime[ext])
                self.assertEqual(st, 200, r)
                self.check_answer(name, r, 5)

    def test_preprocessed_tensor_is_torchvision(self):
        """The replica's decode + preprocessing against torchvision's, value by value: the
        resize's 8-bit rounding is Pillow's, so PNG (decoded identically) matches to float
        rounding, and JPEG (libjpeg-turbo's integer IDCT in both) too."""
        tool = os.path.join(BUILD, "tests", "image_prep_tool")
        if not os.path.exists(tool):
            tool = os.path.join(BUILD, "image_prep_tool")
        for name in sorted(self.images):
            if name.endswith("lossy.webp"):
                continue  # WebP lossy: Pillow's bundled libwebp may upsample chroma differently
            path = os.path.join(self.tmp.name, "img-" + name)
            with open(path, "wb") as f:
                f.write(self.images[name])
            res = subprocess.run([tool, self.repo, "tiny", path], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(res.returncode, 0, res.stderr.decode())
            got = np.frombuffer(res.stdout, dtype=np.float32).reshape(3, 224, 224)
            _, want = self.reference(self.images[name])
            diff = float(np.abs(got - want).max())
            with self.subTest(image=name):
                self.assertLess(diff, 1e-5, "%s: max |corral - torchvision| = %g" % (name, diff))

    def test_top_k(self):
        data = self.images["640x480.jpg"]
        st, r = self.classify(data, "/v2/models/tiny/classify?top_k=3")
        self.assertEqual(st, 200, r)
        self.check_answer("640x480.jpg", r, 3)
        # More than the model has: every class, once each.
        st, r = self.classify(data, "/v2/models/tiny/classify?top_k=1000")
        self.assertEqual(st, 200, r)
        self.assertEqual(sorted(p["index"] for p in r["predictions"]), list(range(CLASSES)))
        self.assertAlmostEqual(sum(p["prob"] for p in r["predictions"]), 1.0, delta=1e-5)
        # Default: 5. A version in the path works too.
        st, r = self.classify(data, "/v2/models/tiny/versions/1/classify")
        self.assertEqual(st, 200, r)
        self.assertEqual(len(r["predictions"]), 5)
        for q in ("top_k=0", "top_k=-1", "top_k=abc", "top_k=1001", "top_k=%zz"):
            st, r = self.classify(data, "/v2/models/tiny/classify?" + q)
            self.assertEqual(st, 400, (q, r))
            self.assertIn("top_k", r["error"])

    def expect(self, status, body, ctype, contains, path="/v2/models/tiny/classify"):
        st, r = self.c.http("POST", path, body=body, headers={"Content-Type": ctype})
        self.assertEqual(st, status, (contains, r))
        self.assertIn(contains, r["error"])

    def test_hostile_uploads(self):
        im = synthetic(320, 240, 99)
        jpg = encode(im, "JPEG", quality=90)
        png = encode(im, "PNG")
        # 415: not an image type, or an image format that is not decoded.
        self.expect(415, b"hello", "text/plain", "not an image upload")
        self.expect(415, encode(im, "GIF"), "image/gif", "not an image upload")
        body, ct = multipart("file", "a.gif", encode(im, "GIF"), "image/gif")
        self.expect(415, body, ct, "GIF images are not supported")
        self.expect(415, encode(im, "BMP"), "application/octet-stream", "BMP images are not")
        self.expect(415, encode(im.convert("CMYK"), "JPEG"), "image/jpeg", "CMYK")
        frames = [synthetic(64, 64, s) for s in range(3)]
        anim = io.BytesIO()
        frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:], duration=100)
        self.expect(415, anim.getvalue(), "image/webp", "animated WebP")
        body, ct = multipart("file", "x.bin", os.urandom(2000), "application/octet-stream")
        self.expect(415, body, ct, "not a JPEG, PNG or WebP")
        # 413: more bytes than --max-image-bytes; more pixels than --max-image-pixels,
        # refused from the header of a small file (a decompression bomb).
        self.expect(413, b"\xff\xd8\xff" + os.urandom(MAX_BYTES), "image/jpeg", "--max-image-bytes")
        big = encode(Image.new("RGB", (3000, 2000), (20, 30, 40)), "JPEG")
        self.assertLess(len(big), MAX_BYTES)
        self.expect(413, big, "image/jpeg", "over the limit of %d pixels" % MAX_PIXELS)
        ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
        bomb = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) +
                png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b""))
        self.expect(413, bomb, "image/png", "60000x60000")
        # 400: truncated, corrupt, empty, lying about its type, malformed forms.
        self.expect(400, jpg[:len(jpg) // 2], "image/jpeg", "truncated")
        self.expect(400, png[:len(png) // 2], "image/png", "truncated")
        bad = bytearray(png)
        idat = bad.find(b"IDAT")
        bad[idat + 40] ^= 0xff
        self.expect(400, bytes(bad), "image/png", "PNG data cannot be decoded")
        self.expect(400, b"", "image/jpeg", "empty")
        self.expect(400, b"this is not a jpeg at all", "image/jpeg", "is not a JPEG image")
        self.expect(400, jpg[:2] + b"\x00" * 50, "image/jpeg", "is not a JPEG image")
        self.expect(400, b"\xff\xd8\xff\xe0" + b"\x00" * 100, "image/jpeg", "JPEG data cannot be decoded")
        body, ct = multipart("image", "a.jpg", jpg, extra=[("top_k", "3")])
        self.expect(400, body, ct, "no field named 'file' (fields: 'top_k', 'image')")
        body, ct = multipart("file", "a.jpg", jpg)
        self.expect(400, body, "multipart/form-data", "boundary")
        self.expect(400, body[:len(body) // 2], ct, "truncated")
        self.expect(400, body, "multipart/form-data; boundary=nothere", "delimiter")
        # A model without preprocessing takes no images; /predict needs a model here.
        self.expect(400, jpg, "image/jpeg", "does not take images", "/v2/models/digits/classify")
        self.expect(400, jpg, "image/jpeg", "needs ?model=NAME", "/predict")
        self.expect(404, jpg, "image/jpeg", "unknown model", "/predict?model=nope")
        self.expect(404, jpg, "image/jpeg", "unknown model", "/v2/models/nope/classify")
        st, r = self.c.http("GET", "/v2/models/tiny/classify")
        self.assertEqual(st, 405, r)
        # Through all of that, the cluster kept serving.
        for _, rep in self.c.replicas:
            self.assertIsNone(rep.p.poll(), "a replica exited")
        st, r = self.classify(self.images["640x480.jpg"])
        self.assertEqual(st, 200, r)
        self.check_answer("640x480.jpg", r, 5)

    def test_concurrent_requests_batch(self):
        """48 image requests at once from 12 connections: every answer right, and the
        replica ran some of them in batches of more than one."""
        names = sorted(n for n in self.images if not n.endswith("lossy.webp"))

        def one(i):
            name = names[i % len(names)]
            c = Cluster(BUILD, self.repo)
            c.port = self.c.port
            try:
                st, r = c.http("POST", "/v2/models/tiny/classify?top_k=2",
                               body=self.images[name],
                               headers={"Content-Type": "application/octet-stream"})
                return name, st, r
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, range(48)))
        self.assertEqual(len(results), 48)
        for name, st, r in results:
            self.assertEqual(st, 200, (name, r))
            self.check_answer(name, r, 2)
        st, stats = self.c.http("GET", "/v2/models/tiny/stats")
        self.assertEqual(st, 200, stats)
        sizes = [b["batch_size"] for m in stats["model_stats"] for b in m["batch_stats"]]
        self.assertTrue(any(s > 1 for s in sizes), "no batch of more than one: %s" % sizes)


if __name__ == "__main__":
    testrun.main(argv=sys.argv[3:])
