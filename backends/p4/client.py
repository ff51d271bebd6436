"""A P4Runtime client: the stream and primary arbitration, the pipeline, Read and Write.

    client = Client(device_id, "127.0.0.1:9559", election_id=(0, 1))   # connect, become primary
    client.set_pipeline(p4info_text_path, device_config_path)
    client.p4info()            -> p4.config.v1.P4Info the target runs
    client.read(entity)        -> [p4.v1.Entity]
    client.write(request)      (device id and election id filled in; grpc.RpcError as the target sends it)
    client.primary()           -> whether it is still the primary on an open stream
    client.close()

What `push` needs and nothing more, on protobuf 6 (see proto.py). Arbitration follows P4Runtime §5:
the first message on the stream is a MasterArbitrationUpdate; the target answers with the primary's
election id and OK for the primary itself.
"""

from __future__ import annotations

import queue
import threading

import grpc
from google.protobuf import text_format

from .proto import code_pb2, p4info_pb2, p4runtime_pb2, p4runtime_pb2_grpc

CONNECT_TIMEOUT_S = 5.0
ARBITRATION_TIMEOUT_S = 5.0


class ClientError(Exception):
    """No target, or the target would not make us primary."""


class Client:
    def __init__(self, device_id: int, address: str, election_id: tuple[int, int] = (0, 1), arbitrate: bool = True):
        """Connect; with `arbitrate`, open the stream and become primary (a reader that only reads
        needs neither: Read takes no election id)."""
        self.device_id, self.election_id = device_id, election_id
        self.channel = grpc.insecure_channel(address)
        self.stub = p4runtime_pb2_grpc.P4RuntimeStub(self.channel)
        # Wait for the target with a first call rather than channel_ready_future, whose connectivity
        # polling would hold every close of the channel for about 200 ms. Any answer, even "not
        # implemented", says a server is there.
        try:
            self.stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(), timeout=CONNECT_TIMEOUT_S, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.channel.close()
                raise ClientError(f"no P4Runtime server answered at {address} (device {device_id})") from None
        self._outbox: queue.Queue = queue.Queue()
        self._inbox: queue.Queue = queue.Queue()
        self._lost = False
        self._stream = None
        if not arbitrate:
            return
        self._stream = self.stub.StreamChannel(iter(self._outbox.get, None))
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        try:
            self._arbitrate()
        except BaseException:
            self.close()
            raise

    def _pump(self) -> None:
        try:
            for message in self._stream:
                self._inbox.put(message)
        except grpc.RpcError as exc:
            self._inbox.put(exc)
        self._inbox.put(None)

    def _arbitrate(self) -> None:
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = self.device_id
        req.arbitration.election_id.high, req.arbitration.election_id.low = self.election_id
        self._outbox.put(req)
        while True:
            try:
                got = self._inbox.get(timeout=ARBITRATION_TIMEOUT_S)
            except queue.Empty:
                raise ClientError("the target did not answer the arbitration") from None
            if isinstance(got, grpc.RpcError):
                raise ClientError(f"the target refused the stream: {got.code().name} {got.details()}")
            if got is None:
                raise ClientError("the target closed the stream")
            if got.HasField("arbitration"):
                if got.arbitration.status.code != code_pb2.OK:
                    raise ClientError(f"another controller is primary for device {self.device_id} "
                                      f"({got.arbitration.status.message or 'not primary'})")
                return

    def primary(self) -> bool:
        """Whether this client is still the primary on an open stream (what the target said since:
        another controller's higher election id, or the stream's end, says no)."""
        while not self._lost:
            try:
                got = self._inbox.get_nowait()
            except queue.Empty:
                break
            if got is None or isinstance(got, grpc.RpcError):
                self._lost = True
            elif got.HasField("arbitration") and got.arbitration.status.code != code_pb2.OK:
                self._lost = True
        return not self._lost

    def _stamp(self, req) -> None:
        req.device_id = self.device_id
        req.election_id.high, req.election_id.low = self.election_id

    def set_pipeline(self, p4info_path: str, device_config_path: str) -> None:
        """SetForwardingPipelineConfig (VERIFY_AND_COMMIT) from a P4Info text file and a device config."""
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        self._stamp(req)
        with open(p4info_path, encoding="utf-8") as f:
            text_format.Parse(f.read(), req.config.p4info)
        with open(device_config_path, "rb") as f:
            req.config.p4_device_config = f.read()
        self.stub.SetForwardingPipelineConfig(req)

    def p4info(self) -> p4info_pb2.P4Info:
        req = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.device_id, response_type=p4runtime_pb2.GetForwardingPipelineConfigRequest.P4INFO_AND_COOKIE)
        return self.stub.GetForwardingPipelineConfig(req).config.p4info

    def read(self, entity: p4runtime_pb2.Entity) -> list[p4runtime_pb2.Entity]:
        req = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        req.entities.append(entity)
        return [e for resp in self.stub.Read(req) for e in resp.entities]

    def write(self, req: p4runtime_pb2.WriteRequest) -> None:
        self._stamp(req)
        self.stub.Write(req)

    def close(self) -> None:
        self._outbox.put(None)
        try:
            if self._stream is not None:
                self._stream.cancel()
        except Exception:  # noqa: BLE001 - closing must not fail
            pass
        self.channel.close()
