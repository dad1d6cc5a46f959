"""The committed stubs (client/onramp/v1) must match protos/: regenerate the descriptor with grpcio-tools and
compare FileDescriptorProtos (independent of the generator's version header). Fix: `make protos`."""
from __future__ import annotations

import pathlib

from google.protobuf import descriptor_pb2

from onramp.v1 import onramp_pb2, onramp_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"


def _fresh_descriptors(tmp_path: pathlib.Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    import grpc_tools
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out = tmp_path / "onramp.desc"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--descriptor_set_out={out}",
                        *protos])
    assert code == 0, f"protoc failed on {protos}"
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    return {f.name: f for f in files}


def _normalized(fd: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """A copy without ``json_name`` (protoc writes it into descriptor sets, the Python generator drops it)."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fd)

    def strip(messages: object) -> None:
        for m in messages:  # type: ignore[attr-defined]
            for f in (*m.field, *m.extension):
                f.ClearField("json_name")
            strip(m.nested_type)
    strip(out.message_type)
    for f in out.extension:
        f.ClearField("json_name")
    return out


def test_generated_descriptor_matches_proto_source(tmp_path: pathlib.Path) -> None:
    fresh = _fresh_descriptors(tmp_path)
    committed = descriptor_pb2.FileDescriptorProto.FromString(onramp_pb2.DESCRIPTOR.serialized_pb)
    assert committed.name in fresh, f"{committed.name} is not generated from protos/ any more"
    assert _normalized(fresh[committed.name]) == _normalized(committed), (
        "client/onramp/v1/onramp_pb2.py is stale: run `make protos` and commit the result")


def test_grpc_stub_has_every_rpc_of_the_proto(tmp_path: pathlib.Path) -> None:
    fresh = _fresh_descriptors(tmp_path)["onramp/v1/onramp.proto"]
    methods = {m.name for s in fresh.service for m in s.method}
    assert methods  # the contract has RPCs at all
    servicer = onramp_pb2_grpc.OnrampServicer
    missing = sorted(m for m in methods if not hasattr(servicer, m))
    assert not missing, f"onramp_pb2_grpc.py lacks {missing}: run `make protos`"
