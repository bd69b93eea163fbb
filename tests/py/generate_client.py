#!/usr/bin/env python3
"""A client nobody on this project wrote: Python grpcio, with stubs generated from
proto/specd.proto at run time (grpc_tools.protoc into a temporary folder). Streams Generate from
a coordinator (the prompt as a chat turn) and prints the text to stdout and a JSON line with the tokens and the summary to
stderr.

Usage: generate_client.py PROTO_DIR HOST:PORT PROMPT N_PREDICT [MODE]"""
import importlib
import json
import os
import sys
import tempfile

from grpc_tools import protoc
import grpc


def main():
    src, addr, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "si"
    out = tempfile.mkdtemp(prefix="specd-py-")
    inc = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{src}", f"-I{inc}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(src, "proto", "specd.proto")])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)
    pb = importlib.import_module("proto.specd_pb2")
    stubs = importlib.import_module("proto.specd_pb2_grpc")
    modes = {"ar": pb.MODE_AR, "si": pb.MODE_SI, "async": pb.MODE_ASYNC}
    with grpc.insecure_channel(addr) as ch:
        stub = stubs.CoordinatorStub(ch)
        req = pb.GenerateRequest(prompt=prompt, chat=True, n_predict=n, mode=modes[mode])
        text, tokens, summary = [], [], None
        for ev in stub.Generate(req, timeout=120):
            if ev.HasField("tokens"):
                text.append(ev.tokens.text)
                tokens.extend(ev.tokens.tokens)
            elif ev.HasField("summary"):
                summary = ev.summary
        status = stub.Status(pb.StatusRequest(), timeout=10)
    sys.stdout.write("".join(text))
    sys.stderr.write(json.dumps({
        "tokens": list(tokens),
        "n_gen": summary.n_gen if summary else -1,
        "mode": pb.Mode.Name(summary.mode) if summary else "",
        "nodes": len(status.nodes),
    }) + "\n")


if __name__ == "__main__":
    main()
