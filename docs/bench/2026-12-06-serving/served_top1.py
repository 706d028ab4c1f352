"""Top-1 on the 1,000 CIFAR-10 JPEGs through `resnet-deploy serve` (the _jpeg ensembles) vs in-process (validate's
pipeline: PIL decode, eval_transform, the artifact's engine), per image."""
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpc
from PIL import Image

from resnet_deploy.artifacts import artifact_card, open_engine
from resnet_deploy.data import eval_transform

ROOT = Path("/tmp/c1000/test")
ARTS = {"resnet20_cifar10": Path("tests/data/resnet20_cifar10.safetensors"), "r20_int8": Path("/tmp/m/r20.int8.xml")}
classes = sorted(p.name for p in ROOT.iterdir())
files = [(f, i) for i, c in enumerate(classes) for f in sorted((ROOT / c).iterdir())]
labels = np.array([i for _, i in files])
raw = [f.read_bytes() for f, _ in files]
port = int(sys.argv[1])
inproc = {}
for name, art in ARTS.items():
    t = eval_transform(artifact_card(art).preprocessing)
    x = np.stack([t(Image.open(f).convert("RGB")).numpy() for f, _ in files])
    with open_engine(art) as e:
        inproc[name] = np.concatenate([e.infer(x[i:i + 64]) for i in range(0, len(x), 64)]).argmax(1)
proc = subprocess.Popen([sys.executable, "-m", "resnet_deploy", "serve", *map(str, ARTS.values()), "--port",
                         str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
for _ in range(300):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.5)
client = grpc.InferenceServerClient(f"127.0.0.1:{port + 1}")
out = {}
for name in ARTS:
    preds = []
    for i in range(0, len(raw), 16):
        chunk = raw[i:i + 16]
        t = grpc.InferInput("IMAGE", [len(chunk), 1], "BYTES")
        t.set_data_from_numpy(np.array(chunk, dtype=object).reshape(-1, 1))
        preds.append(client.infer(f"{name}_jpeg", [t]).as_numpy("logits").argmax(1))
    served = np.concatenate(preds)
    out[name] = {"served_top1": 100 * float((served == labels).mean()),
                 "inprocess_top1": 100 * float((inproc[name] == labels).mean()),
                 "same_prediction": int((served == inproc[name]).sum()), "images": len(labels)}
client.close()
proc.send_signal(signal.SIGTERM)
o, e = proc.communicate(timeout=60)
print(json.dumps(out, indent=1))
print("serve exit", proc.returncode, o.strip().splitlines()[-1])
