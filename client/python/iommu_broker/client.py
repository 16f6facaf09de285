# SPDX-License-Identifier: Apache-2.0
"""Client: one connection to iommud, acting as one device (or the admin).

    client = Client("unix:/tmp/iommud.sock", device="nic0")
    with client.buffer(16384) as buf, client.map(buf) as m:
        print(hex(m.dma_addr))

Every RPC of iommu.v1 is a method. Calls that create something return a
handle (Buffer, Mapping, SgMapping, Allocation, RangeMapping, Domain) that is
a context manager releasing it; queries return typed read-only views of the
response messages (iommu_broker.messages), whose enum fields are members of
iommu_broker.enums.
A failed call raises an IommuError subclass carrying the daemon's code and
message. Each call has a deadline (`timeout` seconds) within which it is
retried while the daemon is UNAVAILABLE (restarting): reads are repeated, and
a call that changes state carries one request id across its retries, so the
daemon answers it with its original reply rather than applying it twice
(iommu_broker.retry).

Thread-safe: a Client may be shared by threads (gRPC channels are).
"""
import dataclasses
import os
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar, Union

import grpc
from google.protobuf.message import Message

from iommu_broker import convert, messages, pb
from iommu_broker.convert import AttrsArg, EnumArg, MemArg
from iommu_broker.errors import InvalidArgument, ResourceExhausted
from iommu_broker.handles import Allocation, Buffer, Domain, Mapping, RangeMapping, SgMapping
from iommu_broker.retry import (RECONNECT_OPTIONS, REQUEST_ID_HEADER, Metadata, Retrier,
                                new_request_id)
from iommu_broker.streams import BatchStream, FaultWatch, Session

DEFAULT_TARGET = "unix:/tmp/iommud.sock"
SESSION_HEADER = "iommu-session-id"
# The daemon's default --max_message_bytes and --max_batch_ops
# (docs/design.md#limits): every reply fits in the former, so the channel
# receives up to exactly that; requests beyond either are refused before
# they are sent.
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_MAX_BATCH_OPS = 8192

_Pem = Union[bytes, str, "os.PathLike[str]"]
_R = TypeVar("_R", bound=Message)
# A unary method of a generated stub: (request, timeout=, metadata=,
# wait_for_ready=) -> response.
_Unary = Callable[..., _R]
# A translate_batch access: (iova, length_bytes[, access[, privileged]]) or a request.
TranslateAccess = Union[tuple[Any, ...], pb.TranslateRequest]


def _read_pem(value: Optional[_Pem]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS to the daemon: PEM bytes or paths. `ca` signed the daemon's
    certificate; `cert` and `key` are the client certificate (--auth=mtls
    only; leave them None with a token). `server_name` is the name checked
    against the daemon's certificate: by default the target's host, or
    "localhost" for a unix: target."""
    ca: _Pem
    cert: Optional[_Pem] = None
    key: Optional[_Pem] = None
    server_name: Optional[str] = None


def _invalid(field: str, value: object, why: str) -> InvalidArgument:
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, f"{field}={value!r}: {why}")


def _check_credentials(token: Optional[str], tls: Optional[TlsConfig]) -> None:
    """Raises InvalidArgument naming the field when the credentials cannot
    work: a bearer token travels only over TLS, and with no client
    certificate (the daemon's --auth=token asks for none)."""
    if token is None:
        return
    if not token or any(c.isspace() for c in token):
        raise _invalid("token", "<redacted>", "must be non-empty, without whitespace")
    if tls is None:
        raise _invalid("tls", None, "a token is sent only over TLS: pass tls=TlsConfig(ca=<the CA "
                                    "that signed the daemon's certificate>)")
    if tls.cert is not None or tls.key is not None:
        raise _invalid("tls.cert", "<set>", "given with a token (--auth=token takes no client "
                                            "certificate)")


class Client:
    """One connection to iommud acting as one device (see the module)."""

    def __init__(self, target: str = DEFAULT_TARGET, device: str = "", *,
                 token: Optional[str] = None, tls: Optional[TlsConfig] = None,
                 timeout: float = 10.0, retries: int = 30,
                 channel_options: Sequence[tuple[str, Any]] = (),
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_batch_ops: int = DEFAULT_MAX_BATCH_OPS) -> None:
        """`device` is the identity requests act as ("" = the admin, with
        --auth=none or an admin credential); `token` a bearer token
        (--auth=token), which needs `tls` with the daemon's CA;
        `tls` alone with a client certificate is --auth=mtls. Raises
        InvalidArgument when the credentials cannot work (a token without
        `tls`). A call is retried on UNAVAILABLE at most `retries` times,
        all within its `timeout`: the timeout normally ends the retries,
        and the default one rides out a daemon restart of a few seconds.
        `max_message_bytes` and `max_batch_ops` are the daemon's limits
        (its defaults unless it runs with others): replies are received up
        to the former, and a request or Batch message beyond either raises
        ResourceExhausted before anything is sent."""
        _check_credentials(token, tls)
        if not 0 < max_message_bytes <= 1 << 30:
            raise _invalid("max_message_bytes", max_message_bytes, "must be 1..2^30")
        if max_batch_ops < 1:
            raise _invalid("max_batch_ops", max_batch_ops, "must be >= 1")
        options: list[tuple[str, Any]] = list(channel_options)
        given = {name for name, _ in options}
        options += [kv for kv in RECONNECT_OPTIONS if kv[0] not in given]
        options += [kv for kv in (("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes))
                    if kv[0] not in given]
        if tls is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(tls.ca), private_key=_read_pem(tls.key),
                certificate_chain=_read_pem(tls.cert))
            server_name = tls.server_name or ("localhost" if target.startswith("unix:") else None)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            channel = grpc.secure_channel(target, creds, options=options)
        metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._init(channel, True, target, device, metadata, timeout, retries,
                   (max_message_bytes, max_batch_ops))

    def _init(self, channel: grpc.Channel, owns_channel: bool, target: str, device: str,
              metadata: Metadata, timeout: float, retries: int,
              limits: tuple[int, int]) -> None:
        self.target = target
        self.device = device
        self.timeout = timeout
        self.max_message_bytes, self.max_batch_ops = limits
        self._channel = channel
        self._owns_channel = owns_channel
        self._metadata = metadata
        self._retries = retries
        self._dma = pb.DmaStub(channel)
        self._memory = pb.MemoryStub(channel)
        self._domains = pb.DomainsStub(channel)
        self._devices = pb.DevicesStub(channel)
        self._sessions = pb.SessionsStub(channel)
        self._stats = pb.StatsStub(channel)

    def _bind(self, device: Optional[str] = None, session_id: Optional[int] = None) -> "Client":
        """A Client on the same channel acting as `device` and/or in a session."""
        metadata = tuple(kv for kv in self._metadata if kv[0] != SESSION_HEADER)
        if session_id is not None:
            metadata += ((SESSION_HEADER, str(session_id)),)
        bound = Client.__new__(Client)
        bound._init(self._channel, False, self.target, self.device if device is None else device,
                    metadata, self.timeout, self._retries,
                    (self.max_message_bytes, self.max_batch_ops))
        return bound

    def as_device(self, device: str) -> "Client":
        """The same connection acting as another device (an admin credential,
        or --auth=none)."""
        return self._bind(device=device)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def _call(self, method: "_Unary[_R]", request: Message, idempotent: bool = False) -> _R:
        """One unary call, retried on UNAVAILABLE within `timeout`; one
        request id for all the attempts of a call that is not idempotent.
        Attempts after the first wait for the channel to reconnect."""
        self._check_size(request)
        metadata = self._metadata
        if not idempotent:
            metadata += ((REQUEST_ID_HEADER, new_request_id()),)
        retry = Retrier(self._channel, self._metadata, self.timeout, self._retries)
        while True:
            try:
                return method(request, timeout=retry.remaining(), metadata=metadata,
                              wait_for_ready=True if retry.attempts > 1 else None)
            except grpc.RpcError as e:
                retry.again(e)

    def _check_size(self, request: Message) -> None:
        """Raises ResourceExhausted when `request` is larger than a message
        the daemon receives (it would refuse it unread): nothing is sent."""
        size = request.ByteSize()
        if size > self.max_message_bytes:
            raise ResourceExhausted(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request takes {size} bytes, more than max_message_bytes="
                f"{self.max_message_bytes} (the daemon's --max_message_bytes); nothing was sent")

    # --- Memory -----------------------------------------------------------
    def alloc_buffer(self, size_bytes: int, placement: EnumArg = "scattered",
                     pool: str = "") -> Buffer:
        r = self._call(self._memory.AllocBuffer, pb.AllocBufferRequest(
            device=self.device, size_bytes=size_bytes, placement=convert.placement(placement),
            pool=pool))
        return Buffer(self, r.buffer)

    buffer = alloc_buffer  # `with client.buffer(n) as buf:`

    def free_buffer(self, buffer_id: int) -> None:
        self._call(self._memory.FreeBuffer, pb.FreeBufferRequest(device=self.device,
                                                                 buffer_id=buffer_id))

    def get_buffer(self, buffer_id: int) -> messages.Buffer:
        """The buffer (its runs and current map_count)."""
        return messages.Buffer(self._call(self._memory.GetBuffer, pb.GetBufferRequest(
            device=self.device, buffer_id=buffer_id), idempotent=True).buffer)

    # --- DMA API ------------------------------------------------------------
    def map(self, mem: MemArg, offset_bytes: int = 0,  # noqa: A003
            length_bytes: Optional[int] = None, direction: EnumArg = "bidirectional",
            attrs: AttrsArg = None) -> Mapping:
        """dma_map_page of `mem` (a Buffer, Allocation, pb.MemRef or buffer id)."""
        r = self._call(self._dma.Map, pb.MapRequest(
            device=self.device, mem=convert.memref(mem, offset_bytes, length_bytes),
            direction=convert.direction(direction), attrs=convert.attrs(attrs)))
        return Mapping(self, r)

    def unmap(self, dma_addr: int) -> None:
        self._call(self._dma.Unmap, pb.UnmapRequest(device=self.device, dma_addr=dma_addr))

    def map_sg(self, segments: Iterable[MemArg] = (), mode: EnumArg = "merge",
               direction: EnumArg = "bidirectional", attrs: AttrsArg = None,
               import_token: str = "") -> SgMapping:
        """dma_map_sg of `segments` (each a Buffer, pb.MemRef, ...), or the
        import of another device's exported buffer."""
        r = self._call(self._dma.MapSg, pb.MapSgRequest(
            device=self.device, segments=[convert.memref(s) for s in segments],
            mode=convert.sg_mode(mode), direction=convert.direction(direction),
            attrs=convert.attrs(attrs), import_token=import_token))
        return SgMapping(self, r)

    def unmap_sg(self, dma_addr: int) -> None:
        self._call(self._dma.UnmapSg, pb.UnmapSgRequest(device=self.device, dma_addr=dma_addr))

    def alloc(self, size_bytes: int, direction: EnumArg = "bidirectional",
              attrs: AttrsArg = None, pool: str = "") -> Allocation:
        """dma_alloc_attrs: pages owned by the device, mapped IOVA-contiguously."""
        r = self._call(self._dma.Alloc, pb.AllocRequest(
            device=self.device, size_bytes=size_bytes, direction=convert.direction(direction),
            attrs=convert.attrs(attrs), pool=pool))
        return Allocation(self, r)

    def free(self, dma_addr: int) -> None:
        self._call(self._dma.Free, pb.FreeRequest(device=self.device, dma_addr=dma_addr))

    def get_sg_table(self, dma_addr: int, export: bool = False, export_to: Iterable[str] = (),
                     export_writable: bool = False) -> messages.GetSgTableResponse:
        """Chunks, size_bytes, export_token. With export, the token is
        limited to the devices in export_to (any device when empty) and
        read-only unless export_writable."""
        return messages.GetSgTableResponse(self._call(self._dma.GetSgTable, pb.GetSgTableRequest(
            device=self.device, dma_addr=dma_addr, export=export,
            export_importers=list(export_to), export_writable=export_writable)))

    def revoke_export(self, export_token: str) -> int:
        """Revokes an export token; returns the imports it unmapped."""
        return int(self._call(self._dma.RevokeExport, pb.RevokeExportRequest(
            device=self.device, export_token=export_token)).imports_unmapped)

    def msi_cookie(self, domain_id: int = 0, window_base: int = 0,
                   window_size_bytes: int = 0) -> messages.MsiCookieResponse:
        """The MSI address in the device's current domain, or (owner of an
        UNMANAGED domain) sets its MSI window."""
        return messages.MsiCookieResponse(self._call(self._dma.MsiCookie, pb.MsiCookieRequest(
            device=self.device, domain_id=domain_id, window_base=window_base,
            window_size_bytes=window_size_bytes)))

    def map_at(self, iova: int, mem: MemArg, offset_bytes: int = 0,
               length_bytes: Optional[int] = None, direction: EnumArg = "bidirectional",
               attrs: AttrsArg = None) -> RangeMapping:
        """iommu_map into the device's UNMANAGED domain at `iova`."""
        ref = convert.memref(mem, offset_bytes, length_bytes)
        r = self._call(self._dma.MapAt, pb.MapAtRequest(
            device=self.device, iova=iova, mem=ref, direction=convert.direction(direction),
            attrs=convert.attrs(attrs)))
        return RangeMapping(self, r, iova, ref.length_bytes)

    def unmap_range(self, iova: int, size_bytes: int) -> int:
        """iommu_unmap of whole mappings in the range; returns bytes unmapped."""
        return int(self._call(self._dma.UnmapRange, pb.UnmapRangeRequest(
            device=self.device, iova=iova, size_bytes=size_bytes)).unmapped_bytes)

    def sync(self) -> None:
        self._call(self._dma.Sync, pb.SyncRequest(device=self.device), idempotent=True)

    def batch(self) -> BatchStream:
        """A Batch stream: `with client.batch() as b: b.submit([ops.map(buf), ...])`."""
        return BatchStream(self)

    # --- Domains ------------------------------------------------------------
    def create_domain(self, smmu: str, type: EnumArg = "dma",  # noqa: A002
                      granule_bytes: int = 0, granted_devices: Iterable[str] = ()) -> Domain:
        """Devices in granted_devices may attach themselves besides the owner."""
        r = self._call(self._domains.CreateDomain, pb.CreateDomainRequest(
            device=self.device, smmu=smmu, type=convert.domain_type(type),
            granule_bytes=granule_bytes, granted_devices=list(granted_devices)))
        return Domain(self, r.domain)

    def destroy_domain(self, domain_id: int) -> None:
        self._call(self._domains.DestroyDomain, pb.DestroyDomainRequest(
            device=self.device, domain_id=domain_id))

    def get_domain(self, domain_id: int) -> messages.Domain:
        return messages.Domain(self._call(self._domains.GetDomain, pb.GetDomainRequest(
            device=self.device, domain_id=domain_id), idempotent=True).domain)

    def list_domains(self) -> list[messages.Domain]:
        return [messages.Domain(d) for d in self._call(
            self._domains.ListDomains, pb.ListDomainsRequest(device=self.device),
            idempotent=True).domains]

    def attach_device(self, domain_id: int, target_device: str = "") -> None:
        """Switches this device (or, for an admin, target_device) to the domain."""
        self._call(self._domains.AttachDevice, pb.AttachDeviceRequest(
            device=self.device, domain_id=domain_id, target_device=target_device))

    def detach_device(self, target_device: str = "") -> None:
        self._call(self._domains.DetachDevice, pb.DetachDeviceRequest(
            device=self.device, target_device=target_device))

    def get_iova_ranges(self) -> messages.GetIovaRangesResponse:
        """domain_id, usable and reserved ranges."""
        return messages.GetIovaRangesResponse(self._call(
            self._domains.GetIovaRanges, pb.GetIovaRangesRequest(device=self.device),
            idempotent=True))

    def walk_domain(self, domain_id: int, start_iova: int = 0,
                    page_leaves: int = 4096) -> Iterator[messages.PageTableLeaf]:
        """The domain's page-table leaves in IOVA order, from start_iova; a
        generator that fetches page_leaves at a time."""
        while True:
            page = self._call(self._domains.WalkDomain, pb.WalkDomainRequest(
                device=self.device, domain_id=domain_id, start_iova=start_iova,
                max_leaves=page_leaves), idempotent=True)
            yield from (messages.PageTableLeaf(leaf) for leaf in page.leaves)
            if page.next_iova == 0:
                return
            start_iova = page.next_iova

    # --- Devices --------------------------------------------------------------
    def list_iommus(self) -> list[messages.SmmuConfig]:
        return [messages.SmmuConfig(s) for s in self._call(
            self._devices.ListIommus, pb.ListIommusRequest(), idempotent=True).smmus]

    def list_devices(self) -> list[messages.DeviceInfo]:
        return [messages.DeviceInfo(d) for d in self._call(
            self._devices.ListDevices, pb.ListDevicesRequest(device=self.device),
            idempotent=True).devices]

    def _translate_request(self, iova: int, length_bytes: int, access: EnumArg,
                           privileged: bool, smmu: str,
                           stream_id: Optional[int]) -> pb.TranslateRequest:
        request = pb.TranslateRequest(
            device=self.device, iova=iova,
            length_bytes=length_bytes, access=convert.access(access), privileged=privileged,
            smmu=smmu)
        if stream_id is not None:
            request.stream_id = stream_id
        return request

    def translate(self, iova: int, length_bytes: int, access: EnumArg = "read",
                  privileged: bool = False, *, smmu: str = "",
                  stream_id: Optional[int] = None) -> messages.TranslateResponse:
        """A device access through the SMMU: the pages, or faulted and
        fault_type (a FaultType). With smmu+stream_id (admin): a raw stream
        access."""
        return messages.TranslateResponse(self._call(
            self._devices.Translate,
            self._translate_request(iova, length_bytes, access, privileged, smmu, stream_id)))

    def translate_batch(self,
                        accesses: Iterable[TranslateAccess]) -> list[messages.TranslateResponse]:
        """`accesses`: (iova, length_bytes[, access[, privileged]]) tuples or
        pb.TranslateRequest; returns one result per access, in order."""
        requests = []
        for a in accesses:
            if isinstance(a, pb.TranslateRequest):
                request = pb.TranslateRequest()
                request.CopyFrom(a)
                if not request.device:
                    request.device = self.device
            else:
                iova, length_bytes, *rest = a
                request = self._translate_request(
                    iova, length_bytes, rest[0] if rest else "read",
                    rest[1] if len(rest) > 1 else False, "", None)
            requests.append(request)
        return [messages.TranslateResponse(r) for r in self._call(
            self._devices.TranslateBatch, pb.TranslateBatchRequest(accesses=requests)).results]

    def watch_faults(self, after_seq: int = 0, timeout: Optional[float] = None) -> FaultWatch:
        """The fault event stream (iterate it; `with` cancels it on exit).
        With `timeout` (seconds) the stream ends in DeadlineExceeded."""
        call = self._devices.WatchFaults(pb.WatchFaultsRequest(device=self.device,
                                                               after_seq=after_seq),
                                         timeout=timeout, metadata=self._metadata)
        return FaultWatch(call)

    # --- Sessions -------------------------------------------------------------
    def open_session(self, ttl_ms: int = 0) -> messages.OpenSessionResponse:
        """session_id and ttl_ms. See also session()."""
        return messages.OpenSessionResponse(self._call(
            self._sessions.OpenSession, pb.OpenSessionRequest(device=self.device, ttl_ms=ttl_ms)))

    def keep_alive(self, session_id: int) -> None:
        self._call(self._sessions.KeepAlive, pb.KeepAliveRequest(
            device=self.device, session_id=session_id), idempotent=True)

    def close_session(self, session_id: int) -> None:
        self._call(self._sessions.CloseSession, pb.CloseSessionRequest(
            device=self.device, session_id=session_id))

    def session(self, ttl_ms: int = 0, keepalive: bool = True) -> Session:
        """Opens a session kept alive in the background; `session.client`
        creates resources owned by it. Closing it releases them all."""
        r = self.open_session(ttl_ms)
        return Session(self, r.session_id, r.ttl_ms, keepalive=keepalive)

    # --- Stats ----------------------------------------------------------------
    def get_stats(self) -> messages.GetStatsResponse:
        """Per SMMU, domain and pool, and the fault ring."""
        return messages.GetStatsResponse(self._call(
            self._stats.GetStats, pb.GetStatsRequest(device=self.device), idempotent=True))
