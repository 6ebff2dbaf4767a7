"""The serving baseline: a PyTorch model behind FastAPI, by default the bundled digits model.

This is the setup most users run today, and what bench/serving_vs_fastapi.sh
measures corral against. The model (by default models/digits/model.py's build()
and the weights models/digits/digits.pt) is loaded once per worker process at
import.

Run from the source tree:
    uvicorn bench.fastapi_server:app --host 127.0.0.1 --port 8001 --workers 2

Endpoints:
    POST /predict  {"input": [N numbers]}  ->  {"logits": [...], "prediction": k}
                   (N = 64 for digits, the model's input features otherwise)
    GET  /health   {"status": "ok"} once the model is loaded

With --workers N, uvicorn binds the listening socket itself and hands it to the
workers in a way that keeps asyncio from setting TCP_NODELAY on accepted
connections (uvicorn issue #3149), so every keep-alive request after the first
would wait ~40 ms for a delayed ACK. Each worker therefore sets TCP_NODELAY on
the listening sockets it inherited (accepted sockets inherit it on Linux): the
baseline is measured as it performs once that bug is fixed or avoided.

Environment: CORRAL_DIGITS_DIR (default models/digits of this tree) holds the
digits weights; TORCH_THREADS (default 1) sets torch's threads per worker.
To serve another model taking one flat row of features (such as the MLP
784-512-10 of bench/models/zoo.py), set
    FASTAPI_BUILDER     MODULE:FUNCTION that returns the nn.Module, e.g.
                        bench.models.zoo:mlp (imported with this tree on sys.path)
    FASTAPI_STATE_DICT  a state_dict saved with torch.save to load into it
                        (optional: without it the module keeps its initial weights)
    FASTAPI_FEATURES    the input row's length (default: in_features of the
                        module's first nn.Linear)
"""

import importlib
import os
import socket
import sys
from pathlib import Path
from typing import List

import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.digits.model import N_FEATURES, build  # noqa: E402


def _nodelay_on_inherited_listeners() -> int:
    """Sets TCP_NODELAY on the bound, unconnected TCP sockets this process holds: the
    listener uvicorn passed down (another worker may not have called listen() on it
    yet, so SO_ACCEPTCONN cannot tell). Returns how many it set."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return 0  # not Linux: nothing to inherit the option through
    n = 0
    for fd in fds:
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket, or already closed
        try:
            if s.family not in (socket.AF_INET, socket.AF_INET6) or s.type != socket.SOCK_STREAM:
                continue
            if s.getsockname()[1] == 0:
                continue  # not bound
            try:
                s.getpeername()
                continue  # a connection, not a listener
            except OSError:
                pass
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n += 1
        except OSError:
            pass
        finally:
            s.detach()
    return n


_nodelay_on_inherited_listeners()

MODEL_DIR = Path(os.environ.get("CORRAL_DIGITS_DIR", str(ROOT / "models" / "digits")))


def _load_model():
    """Returns (module in eval mode, input row length, title): the digits model unless
    FASTAPI_BUILDER names another builder. A wrong setting stops the worker with a
    sentence saying what was expected, rather than serving some other model."""
    spec = os.environ.get("FASTAPI_BUILDER", "")
    if not spec:
        model = build()
        model.load_state_dict(torch.load(str(MODEL_DIR / "digits.pt"), map_location="cpu",
                                         weights_only=True))
        return model.eval(), N_FEATURES, "digits"
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise SystemExit("FASTAPI_BUILDER must be MODULE:FUNCTION (e.g. bench.models.zoo:mlp), got '%s'" % spec)
    model = getattr(importlib.import_module(mod_name), fn_name)()
    sd_path = os.environ.get("FASTAPI_STATE_DICT", "")
    if sd_path:
        model.load_state_dict(torch.load(sd_path, map_location="cpu", weights_only=True))
    features = os.environ.get("FASTAPI_FEATURES", "")
    if features:
        n = int(features)
    else:
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise SystemExit("%s has no nn.Linear to read the input length from: set FASTAPI_FEATURES" % spec)
        n = linears[0].in_features
    return model.eval(), n, spec


# One thread per worker: the workers are the parallelism, as with corral's replicas.
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
_model, _features, _title = _load_model()

app = FastAPI(title="%s (FastAPI + PyTorch baseline)" % _title)


class PredictRequest(BaseModel):
    input: List[float] = Field(..., min_length=_features, max_length=_features,
                               description="one row of the model's input features "
                                           "(digits: the 64 raw pixel values 0..16 of an 8x8 image)")


class PredictResponse(BaseModel):
    logits: List[float]
    prediction: int


@app.get("/health")
def health():
    return {"status": "ok"}


@app.post("/predict", response_model=PredictResponse)
def predict(req: PredictRequest):
    x = torch.tensor([req.input], dtype=torch.float32)
    with torch.inference_mode():
        logits = _model(x)[0]
    return PredictResponse(logits=logits.tolist(), prediction=int(logits.argmax()))
