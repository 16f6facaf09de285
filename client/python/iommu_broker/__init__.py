# SPDX-License-Identifier: Apache-2.0
"""iommu_broker: the Python SDK of iommud.

    from iommu_broker import Client
    with Client(device="nic0") as client:  # the daemon's default socket
        with client.buffer(16384) as buf, client.map(buf, direction="to_device") as m:
            print(hex(m.dma_addr))

See client/python/README.md.
"""
import importlib
import importlib.util
import sys

# What the package needs to import, each reported as what it is: a missing
# runtime dependency names its Debian package, the generated modules missing
# (an unbuilt source tree) says how to build them.
_RUNTIME = (("grpc", "grpcio", "python3-grpcio"),
            ("google.protobuf", "protobuf", "python3-protobuf"))


def _require_runtime() -> None:
    for module, distribution, debian in _RUNTIME:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # something the module itself imports: its own error says what
            raise ModuleNotFoundError(
                f"iommu_broker needs the {module} module ({distribution}), which "
                f"{sys.executable} cannot import: install Debian's {debian} "
                f"(apt-get install {debian}) and use a Python that sees it: /usr/bin/python3, "
                "or a venv made with --system-site-packages", name=module) from e
    if importlib.util.find_spec("iommu_broker._generated") is None:
        raise ModuleNotFoundError(
            "iommu_broker: its generated protobuf modules (iommu_broker._generated) are "
            "missing: this is the package's source directory, not a built package. Build them "
            "(cmake --build build --target iommu_python, then PYTHONPATH=build/client/python) "
            "or install the package (pip install ./client/python)",
            name="iommu_broker._generated")


_require_runtime()

# The imports follow the check on purpose.
from iommu_broker import enums, messages, ops, pb  # noqa: E402
from iommu_broker._version import __version__  # noqa: E402
from iommu_broker.client import (DEFAULT_MAX_BATCH_OPS,  # noqa: E402
                                 DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TARGET, SESSION_HEADER,
                                 Client, TlsConfig)
from iommu_broker.convert import phys  # noqa: E402
from iommu_broker.enums import (AccessKind, DmaDirection, DomainType, FaultType,  # noqa: E402
                                Placement, RegionKind, ReservedKind, SgMode, Stage)
from iommu_broker.errors import (Aborted, AlreadyExists, Cancelled, DataLoss,  # noqa: E402
                                 DeadlineExceeded, FailedPrecondition, Internal,
                                 InvalidArgument, IommuError, NotFound, OutOfRange,
                                 PermissionDenied, ResourceExhausted, Unauthenticated,
                                 Unavailable, Unimplemented, Unknown, error_for)
from iommu_broker.handles import (Allocation, Buffer, Domain, Handle, Mapping,  # noqa: E402
                                  RangeMapping, SgMapping)
from iommu_broker.streams import BatchStream, FaultWatch, Session  # noqa: E402

__all__ = [
    "__version__", "Client", "TlsConfig", "DEFAULT_TARGET", "SESSION_HEADER",
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_MAX_BATCH_OPS", "enums",
    "messages", "ops", "pb", "phys", "Handle", "Buffer", "Mapping", "SgMapping", "Allocation",
    "RangeMapping", "Domain", "Session", "BatchStream", "FaultWatch", "IommuError", "error_for",
    "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
    "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    # Every enum of iommu_broker.enums (sdk_unit_test checks none is missing).
    "AccessKind", "DmaDirection", "DomainType", "FaultType", "Placement", "RegionKind",
    "ReservedKind", "SgMode", "Stage",
]
