"""The serving baseline: the bundled digits model behind FastAPI + PyTorch.

This is the setup most users run today, and what bench/serving_vs_fastapi.sh
measures corral against. The model (models/digits/model.py's build() and the
weights models/digits/digits.pt) is loaded once per worker process at import.

Run from the source tree:
    uvicorn bench.fastapi_server:app --host 127.0.0.1 --port 8001 --workers 2

Endpoints:
    POST /predict  {"input": [64 numbers]}  ->  {"logits": [10 numbers], "prediction": k}
    GET  /health   {"status": "ok"} once the model is loaded

With --workers N, uvicorn binds the listening socket itself and hands it to the
workers in a way that keeps asyncio from setting TCP_NODELAY on accepted
connections (uvicorn issue #3149), so every keep-alive request after the first
would wait ~40 ms for a delayed ACK. Each worker therefore sets TCP_NODELAY on
the listening sockets it inherited (accepted sockets inherit it on Linux): the
baseline is measured as it performs once that bug is fixed or avoided.

Environment: CORRAL_DIGITS_DIR (default models/digits of this tree) holds the
weights; TORCH_THREADS (default 1) sets torch's threads per worker.
"""

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

# One thread per worker: the workers are the parallelism, as with corral's replicas.
torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
_model = build()
_model.load_state_dict(torch.load(str(MODEL_DIR / "digits.pt"), map_location="cpu", weights_only=True))
_model.eval()

app = FastAPI(title="digits (FastAPI + PyTorch baseline)")


class PredictRequest(BaseModel):
    input: List[float] = Field(..., min_length=N_FEATURES, max_length=N_FEATURES,
                               description="the 64 raw pixel values (0..16) of one 8x8 image")


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
