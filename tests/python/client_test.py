"""A Python grpcio client, generated from proto/spool/v1/spool.proto at run time, doing
create / append / read / subscribe against a running spool server.

usage: client_test.py ADDR PROTO_DIR OUT_DIR
"""
import os
import random
import sys
import threading
import time

from grpc_tools import protoc


def append_idempotent(grpc, log, req, attempts=5):
    """The README's retry pattern: resend the same request while its outcome is unknown."""
    for attempt in range(attempts):
        try:
            return log.Append(req, timeout=10)
        except grpc.RpcError as e:
            retry = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retry or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)


def open_channel(grpc, addr):
    """TLS when SPOOL_TLS_CA is set (with a client certificate if SPOOL_TLS_CERT/KEY are),
    and a bearer token on every call when SPOOL_TOKEN is: the README's secure client."""
    ca = os.environ.get("SPOOL_TLS_CA")
    if ca:
        read = lambda v: open(os.environ[v], "rb").read() if os.environ.get(v) else None
        creds = grpc.ssl_channel_credentials(
            root_certificates=read("SPOOL_TLS_CA"), private_key=read("SPOOL_TLS_KEY"),
            certificate_chain=read("SPOOL_TLS_CERT"))
        channel = grpc.secure_channel(addr, creds)
    else:
        channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    token = os.environ.get("SPOOL_TOKEN")
    return grpc.intercept_channel(channel, bearer(grpc, token)) if token else channel


def bearer(grpc, token):
    """A client interceptor adding `authorization: Bearer TOKEN` to every call."""
    import collections

    class Details(collections.namedtuple(
            "Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                        "compression")), grpc.ClientCallDetails):
        pass

    class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                 grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        def _add(self, d):
            md = list(d.metadata or []) + [("authorization", "Bearer " + token)]
            return Details(d.method, d.timeout, md, d.credentials, d.wait_for_ready,
                           d.compression)

        def intercept_unary_unary(self, cont, d, req):
            return cont(self._add(d), req)

        def intercept_unary_stream(self, cont, d, req):
            return cont(self._add(d), req)

        def intercept_stream_unary(self, cont, d, reqs):
            return cont(self._add(d), reqs)

        def intercept_stream_stream(self, cont, d, reqs):
            return cont(self._add(d), reqs)

    return Bearer()


def main():
    addr, proto_dir, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    rc = protoc.main([
        "protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        os.path.join(proto_dir, "spool/v1/spool.proto"),
    ])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out_dir)
    import grpc
    from spool.v1 import spool_pb2 as pb
    from spool.v1 import spool_pb2_grpc as rpc

    channel = open_channel(grpc, addr)
    logs = rpc.LogsStub(channel)
    log = rpc.LogStub(channel)

    info = logs.Create(pb.CreateLogRequest(name="py", config=pb.LogConfig(
        compression=pb.COMPRESSION_ZSTD, zstd_level=3)))
    assert info.name == "py" and info.end_offset == 0, info

    # Subscribe before appending: the stream must deliver what is appended next.
    got = []
    done = threading.Event()

    def follow():
        for msg in log.Subscribe(pb.SubscribeRequest(log="py", from_offset=0), timeout=30):
            got.extend(msg.records)
            if len(got) >= 100:
                done.set()
                return

    t = threading.Thread(target=follow)
    t.start()

    first = log.Append(pb.AppendRequest(log="py", records=[b"hello", b"", b"x" * 10000],
                                        ack=pb.ACK_MODE_ASYNC))
    assert first.first_offset == 0 and first.count == 3, first
    assert first.durability == pb.DURABILITY_LOCAL, first
    assert first.read_token == 3, first

    def requests():
        for i in range(97):
            yield pb.AppendRequest(log="py", records=[f"stream {i}".encode()], request_id=i)

    replies = list(log.AppendStream(requests()))
    assert [r.request_id for r in replies] == list(range(97)), replies[:3]
    assert replies[-1].first_offset == 99, replies[-1]

    r = log.Read(pb.ReadRequest(log="py", from_offset=0, max_records=5, min_offset=first.read_token))
    assert [x.value for x in r.records[:3]] == [b"hello", b"", b"x" * 10000], r.records[:3]
    assert r.records[3].value == b"stream 0"
    assert r.end_offset == 100, r.end_offset

    assert done.wait(20), f"subscriber got {len(got)} records"
    t.join(5)
    assert [x.offset for x in got[:100]] == list(range(100))
    assert got[99].value == b"stream 96"

    try:
        log.Read(pb.ReadRequest(log="nope"))
        raise AssertionError("read of a missing log succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    try:
        log.Read(pb.ReadRequest(log="py", from_offset=1000))
        raise AssertionError("read past the end succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e

    # Idempotent appends: a random producer id, the sequence one more per request. A
    # retry of a request the log holds gets its original offsets, marked duplicate.
    producer = random.getrandbits(64) or 1
    once = pb.AppendRequest(log="py", records=[b"once"], ack=pb.ACK_MODE_ASYNC,
                            producer_id=producer, sequence=0)
    a = append_idempotent(grpc, log, once)
    b = append_idempotent(grpc, log, once)
    assert not a.duplicate and b.duplicate, (a, b)
    assert (b.first_offset, b.count) == (a.first_offset, 1) == (100, 1), b
    try:
        log.Append(pb.AppendRequest(log="py", records=[b"gap"], producer_id=producer, sequence=5))
        raise AssertionError("a sequence gap was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        assert "expected 1" in e.details(), e.details()
    assert log.Read(pb.ReadRequest(log="py", from_offset=100)).end_offset == 101

    listed = logs.List(pb.ListLogsRequest())
    assert [l.name for l in listed.logs] == ["py"]
    print("python client ok")


if __name__ == "__main__":
    main()
