"""P4Runtime's messages and service, on protobuf 6 (upb).

The generated code comes from finsy (a maintained P4Runtime client library that ships the P4Runtime
1.4 protos built for protobuf 6); the wire format, and the message names (`p4.v1.WriteRequest`), are
P4Runtime's own, so any target and any client (p4runtime-shell included) reads what these write. This
module is the one place that names where they come from.
"""

from __future__ import annotations

from finsy.proto import p4i as p4info_pb2
from finsy.proto import p4r as p4runtime_pb2
from finsy.proto import p4r_grpc as p4runtime_pb2_grpc
from finsy.proto import rpc_code as code_pb2
from finsy.proto import rpc_status as status_pb2

__all__ = ["code_pb2", "p4info_pb2", "p4runtime_pb2", "p4runtime_pb2_grpc", "status_pb2"]
