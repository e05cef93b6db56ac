#!/usr/bin/env python3
"""A Python client of Spool over gRPC (grpcio): create a log, append, read, follow.

The stubs are generated from the repository's .proto files when the script starts
(grpcio-tools), so they always match the server built from the same checkout.

    python3 -m venv venv && venv/bin/pip install grpcio grpcio-tools
    spool serve &                       # or: spool dev-cluster
    venv/bin/python examples/python/client.py [ADDR]

ADDR defaults to $SPOOL_ADDR, else 127.0.0.1:7070. For a node with TLS and tokens, see
tests/python/client_test.py (ssl_channel_credentials and an `authorization: Bearer`
header on every call).
"""
import atexit
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto", "proto")
LOG = "example-py"


def load_stubs():
    """Generate spool/v1 stubs into a temporary directory and import them."""
    out = tempfile.mkdtemp(prefix="spool-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    rc = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(PROTO_DIR, "spool/v1/spool.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed ({rc}) on {PROTO_DIR}/spool/v1/spool.proto")
    sys.path.insert(0, out)
    from spool.v1 import spool_pb2, spool_pb2_grpc
    return spool_pb2, spool_pb2_grpc


def main():
    import grpc
    pb, rpc = load_stubs()
    addr = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SPOOL_ADDR", "127.0.0.1:7070")
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    logs, log = rpc.LogsStub(channel), rpc.LogStub(channel)

    try:
        logs.Create(pb.CreateLogRequest(name=LOG), timeout=10)
        print(f"created {LOG}")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
        print(f"{LOG} exists")

    # One batch, acknowledged once durable on the primary.
    ack = log.Append(pb.AppendRequest(log=LOG, records=[b"hello", b"world"],
                                      ack=pb.ACK_MODE_ASYNC), timeout=10)
    print(f"appended {ack.count} record(s) at offset {ack.first_offset} (epoch {ack.epoch})")

    # Many batches on one stream; replies come back in order, matched by request_id.
    def batches():
        for i in range(10):
            yield pb.AppendRequest(log=LOG, records=[f"batch {i}".encode()], request_id=i)

    for reply in log.AppendStream(batches(), timeout=10):
        print(f"batch {reply.request_id} acked at offset {reply.first_offset}")

    # Read back; min_offset (the read token) makes a replica wait until it has the records.
    r = log.Read(pb.ReadRequest(log=LOG, from_offset=ack.first_offset, max_records=100,
                                min_offset=ack.read_token), timeout=10)
    for rec in r.records:
        print(f"{rec.offset:>6}  {rec.value.decode(errors='replace')}")
    print(f"the log ends at {r.end_offset}")

    # Follow from the first record: the stream stays open for new ones; stop once we
    # have what we read.
    got = 0
    for msg in log.Subscribe(pb.SubscribeRequest(log=LOG, from_offset=ack.first_offset),
                             timeout=10):
        got += len(msg.records)
        if got >= len(r.records):
            break
    print(f"subscription delivered {got} record(s)")


if __name__ == "__main__":
    main()
